# ruff: noqa: F811  (the gateway and fakes fixtures are imported from test_external_models)
"""The egress policy: external models reach only public addresses, and what ``MODELFLEET_EGRESS_ALLOW`` opens.

Each test attacks the policy the way an editor would (issue 11: ``custom_provider_url`` pointing
at a model replica's ``/invocations`` on 127.0.0.1, read back through a query): at config time
through the API, and at query time through the real gateway (uvicorn in this process) against
servers on 127.0.0.1. DNS is the tests' resolver (``tests.providers.Resolver``, the autouse
``dns`` fixture): it stands in for the system's, so that a name can answer loopback, or one
address when the config is saved and another when the gateway connects (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from endpoints_app import egress
from endpoints_app.egress import EgressRefused, literal_address, parse_allow_list, refusal
from endpoints_app.gateway.external import ExternalModels
from endpoints_app.models import Endpoint
from tests.providers import FakeProvider, GoogleTokenServer, OpenAIServer, Recorded, VertexServer
from tests.test_external_models import CHAT, KEY, URL, body_for, external, fakes, gateway, store_secret  # noqa: E402,F401
from tests.test_external_providers import CLIENT_EMAIL, key_file

PUBLIC = "93.184.216.34"  # a public address; nothing connects to it (the resolver only names it)


def custom(url: str, *, key_header: str | None = None) -> dict:
    """A served entity with a custom provider at ``url`` (bearer auth, or ``key_header``)."""
    auth = (
        {"api_key_auth": {"key": key_header, "value_plaintext": KEY}}
        if key_header
        else {"bearer_token_auth": {"token_plaintext": KEY}}
    )
    config = {"custom_provider_url": url, **auth}
    return {"name": "llm", "external_model": external("custom", "custom_provider_config", config, name="my-llama")}


def post_config(api, entity: dict, name: str = "llm"):  # type: ignore[no-untyped-def]
    return api.post(URL, body_for(name, entity), format="json")


def refused_with(response, *words: str) -> str:  # type: ignore[no-untyped-def]
    """The 400's message, after checking it is one and names each of ``words``."""
    assert response.status_code == 400, response.content
    error = response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE", error
    for word in words:
        assert word in error["message"], error["message"]
    return error["message"]


class Service(FakeProvider):
    """A server on 127.0.0.1 that is not an LLM provider: each answer is ``answer`` (status,
    content type, body), whatever was asked; like a model replica's ``/invocations`` or an
    internal service's page."""

    def __init__(
        self, status: int = 200, content_type: str = "application/json", body: bytes = b"{}", location: str = ""
    ) -> None:
        super().__init__(KEY)
        self.answer = (status, content_type, body)
        self.location = location

    def handle(self, handler: BaseHTTPRequestHandler, request: Recorded) -> None:
        status, content_type, body = self.answer
        handler.send_response(status)
        handler.send_header("content-type", content_type)
        handler.send_header("content-length", str(len(body)))
        if self.location:
            handler.send_header("location", self.location)
        handler.end_headers()
        handler.wfile.write(body)


# --- the rules, address by address ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "special-purpose"),  # documentation
        ("::ffff:127.0.0.1", "loopback address (inside the IPv6 address"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ],
)
def test_each_non_public_address_is_refused_by_its_rule(address: str, rule: str) -> None:
    assert rule in (refusal(literal_address(address)) or "")  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(literal_address(address)) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1")],
)
def test_the_c_resolvers_other_spellings_of_an_address_are_read_as_addresses(host: str, address: str) -> None:
    assert str(literal_address(host)) == address


def test_the_allow_list_takes_names_addresses_ports_and_cidr_blocks() -> None:
    entries = parse_allow_list(" 10.0.0.0/8, proxy.internal:3128 ,[::1]:8080, 127.0.0.1, fd00::/8")
    assert [(e.host, str(e.network) if e.network else None, e.port) for e in entries] == [
        (None, "10.0.0.0/8", None),
        ("proxy.internal", None, 3128),
        (None, "::1/128", 8080),
        (None, "127.0.0.1/32", None),
        (None, "fd00::/8", None),
    ]
    assert parse_allow_list("") == ()


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.1/8",
        "a,,b",
        "host:0",
        "host:70000",
        "host:http",
        "http://proxy.internal",
        "*",
        "bad host",
        "[::1",
        "127.1",
    ],
)
def test_a_malformed_allow_list_entry_is_an_error(value: str) -> None:
    with pytest.raises(ValueError, match="MODELFLEET_EGRESS_ALLOW entry"):
        parse_allow_list(value)


def test_a_malformed_allow_list_stops_start_up() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", "MODELFLEET_EGRESS_ALLOW": "10.0.0.1/8"}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=60,
    )
    assert done.returncode != 0
    assert "MODELFLEET_EGRESS_ALLOW entry '10.0.0.1/8'" in done.stderr


def test_a_cidr_block_does_not_open_a_metadata_address_but_naming_it_does() -> None:
    with pytest.raises(EgressRefused, match="metadata"):
        egress.addresses_for("169.254.169.254", 80, parse_allow_list("169.254.0.0/16"), must_resolve=True)
    assert egress.addresses_for("169.254.1.1", 80, parse_allow_list("169.254.0.0/16"), must_resolve=True)
    assert egress.addresses_for("169.254.169.254", 80, parse_allow_list("169.254.169.254"), must_resolve=True)


# --- config time -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "rule"),
    [
        # The attack: a model replica's scoring path on this host.
        ("http://127.0.0.1:5001/invocations?", "127.0.0.1 is a loopback address"),
        ("http://127.1:5001/v1", "127.1 (127.0.0.1) is a loopback address"),
        ("http://2130706433:5001/v1", "(127.0.0.1) is a loopback address"),
        ("http://0x7f.1/v1", "(127.0.0.1) is a loopback address"),
        ("http://127.0.0.1./v1", "loopback address"),
        ("http://[::1]:5001/v1", "::1 is a loopback address"),
        ("http://0.0.0.0:5001/v1", "unspecified"),
        ("http://10.0.0.7/v1", "a private address"),
        ("http://192.168.0.1/v1", "a private address"),
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "a cloud metadata address"),
        ("http://169.254.10.10/v1", "a link-local address"),
        ("http://[::ffff:127.0.0.1]/v1", "loopback address (inside the IPv6 address ::ffff:7f00:1)"),
        ("http://[fe80::1]/v1", "link-local"),
        ("http://localhost:5001/v1", "localhost is a loopback name"),
        ("http://replica.localhost:5001/v1", "a loopback name"),
        ("http://metadata.google.internal/computeMetadata/v1/", "a cloud metadata name"),
        ("https://user:pw@llm.example.com/v1", "must not carry a user name or password"),
    ],
)
def test_a_provider_url_to_a_refused_address_is_a_400_naming_the_rule(api, url: str, rule: str) -> None:
    message = refused_with(post_config(api, custom(url)), rule, "custom_provider_url")
    if "user name" not in message:
        assert "MODELFLEET_EGRESS_ALLOW" in message  # it says how an admin would allow it
    assert not Endpoint.objects.exists()


@pytest.mark.django_db
def test_a_name_that_resolves_to_a_refused_address_is_refused(api, dns) -> None:
    dns.names["llm.corp.test"] = ["10.20.30.40"]
    refused_with(
        post_config(api, custom("https://llm.corp.test/v1")), "llm.corp.test resolves to a private"
    )
    # Every address is checked: one public address does not carry a loopback one through.
    dns.names["llm.corp.test"] = [PUBLIC, "127.0.0.1"]
    refused_with(post_config(api, custom("https://llm.corp.test/v1")), "resolves to a loopback address")
    dns.names["llm.corp.test"] = [PUBLIC]
    assert post_config(api, custom("https://llm.corp.test/v1")).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("provider", "config_key", "config", "field"),
    [
        ("openai", "openai_config", {"openai_api_base": "http://127.0.0.1:8080/v1"}, "openai_api_base"),
        ("cohere", "cohere_config", {"cohere_api_base": "http://10.0.0.1"}, "cohere_api_base"),
        (
            "databricks-model-serving",
            "databricks_model_serving_config",
            {"databricks_workspace_url": "http://169.254.169.254"},
            "databricks_workspace_url",
        ),
    ],
)
def test_every_providers_url_field_is_checked(api, provider, config_key, config, field) -> None:
    secret = {"openai": "openai_api_key", "cohere": "cohere_api_key"}.get(provider, "databricks_api_token")
    model = external(provider, config_key, {**config, f"{secret}_plaintext": KEY})
    refused_with(post_config(api, {"name": "llm", "external_model": model}), field, "address")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("provider", "config_key", "config", "field"),
    [
        (
            "amazon-bedrock",
            "amazon_bedrock_config",
            {
                "bedrock_provider": "anthropic",
                "aws_access_key_id_plaintext": "AKIA",
                "aws_secret_access_key_plaintext": KEY,
            },
            "aws_region",
        ),
        (
            "google-cloud-vertex-ai",
            "google_cloud_vertex_ai_config",
            {"project_id": "p", "private_key_plaintext": "{}"},
            "region",
        ),
    ],
)
@pytest.mark.parametrize("region", ["evil.example#", "127.0.0.1/", "us-east-1.evil.example", "x@evil", "US-EAST-1"])
def test_a_region_is_only_a_region_so_nothing_gets_into_the_host_name(api, provider, config_key, config, field, region):
    model = external(provider, config_key, {**config, field: region})
    refused_with(post_config(api, {"name": "llm", "external_model": model}), field, "is not")


@pytest.mark.django_db
def test_real_regions_pass(api) -> None:
    bedrock = external(
        "amazon-bedrock",
        "amazon_bedrock_config",
        {
            "aws_region": "us-gov-west-1",
            "bedrock_provider": "anthropic",
            "aws_access_key_id_plaintext": "AKIA",
            "aws_secret_access_key_plaintext": KEY,
        },
    )
    assert post_config(api, {"name": "b", "external_model": bedrock}, "b").status_code == 200
    vertex = external(
        "google-cloud-vertex-ai",
        "google_cloud_vertex_ai_config",
        {"project_id": "p", "region": "europe-west4", "private_key_plaintext": "{}"},
    )
    assert post_config(api, {"name": "v", "external_model": vertex}, "v").status_code == 200


@pytest.mark.django_db
def test_a_plaintext_key_files_token_uri_is_checked(api) -> None:
    key_file = json.dumps({"client_email": "a@p.iam.gserviceaccount.com", "token_uri": "http://169.254.169.254/token"})
    model = external(
        "google-cloud-vertex-ai",
        "google_cloud_vertex_ai_config",
        {"project_id": "p", "region": "us-central1", "private_key_plaintext": key_file},
    )
    refused_with(post_config(api, {"name": "v", "external_model": model}), "private_key.token_uri", "metadata")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header", ["Host", "host", "Transfer-Encoding", "Content-Length", "Connection", "X-Forwarded-Host"]
)
def test_a_routing_or_framing_header_cannot_carry_the_key(api, header: str) -> None:
    refused_with(post_config(api, custom("https://llm.example.com/v1", key_header=header)), "api_key_auth.key")


@pytest.mark.django_db
def test_the_allow_list_opens_exactly_its_host_port_or_block(api, settings) -> None:
    url = "http://127.0.0.1:5001/v1"
    settings.EGRESS_ALLOW = parse_allow_list("127.0.0.1:5002")  # another port
    refused_with(post_config(api, custom(url)), "loopback")
    settings.EGRESS_ALLOW = parse_allow_list("127.0.0.1:5001")
    assert post_config(api, custom(url)).status_code == 200
    settings.EGRESS_ALLOW = parse_allow_list("10.0.0.0/8")
    assert post_config(api, custom("http://10.9.8.7/v1"), "corp").status_code == 200
    refused_with(post_config(api, custom("http://192.168.0.1/v1"), "other"), "private")


# --- connect time ----------------------------------------------------------------------------------


def query(gateway, token: str, body: dict | None = None):  # type: ignore[no-untyped-def]
    return gateway.post("/serving-endpoints/llm/invocations", body or CHAT, token)


@pytest.mark.django_db(transaction=True)
def test_a_name_that_rebinds_to_loopback_after_the_check_is_refused_at_connect_time(gateway, api, token, dns):
    provider = OpenAIServer(KEY)  # on loopback, and not allowed
    try:
        dns.names["llm.rebind.test"] = [PUBLIC]  # public when the config is saved
        assert post_config(api, custom(f"http://llm.rebind.test:{provider.port}/v1")).status_code == 200
        dns.names["llm.rebind.test"] = ["127.0.0.1"]  # loopback when the gateway connects
        response = query(gateway, token)
        refused_with(response, "llm.rebind.test resolves to a loopback address", "MODELFLEET_EGRESS_ALLOW")
        assert provider.requests == []
    finally:
        provider.stop()


@pytest.mark.django_db(transaction=True)
def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(gateway, api, token, dns, settings):
    """``llm.pinned.test`` exists only in the tests' resolver: the query can only succeed if the
    gateway connected to the address the policy checked, not to a name resolved again."""
    provider = OpenAIServer(KEY)
    try:
        dns.names["llm.pinned.test"] = ["127.0.0.1"]
        settings.EGRESS_ALLOW = parse_allow_list(f"llm.pinned.test:{provider.port}")
        assert post_config(api, custom(f"http://llm.pinned.test:{provider.port}/v1")).status_code == 200
        dns.calls.clear()
        response = query(gateway, token)
        assert response.status_code == 200, response.text
        assert provider.requests[-1].headers["host"] == f"llm.pinned.test:{provider.port}"
        assert dns.calls == ["llm.pinned.test"]  # resolved once, for the one new connection
    finally:
        provider.stop()


@pytest.mark.django_db(transaction=True)
def test_a_narrowed_policy_bites_at_the_next_connection(gateway, fakes, api, token, settings):
    provider = OpenAIServer(KEY)
    fakes.append(provider)  # allowed, for now
    assert post_config(api, custom(f"{provider.url}/v1")).status_code == 200
    assert query(gateway, token).status_code == 200
    settings.EGRESS_ALLOW = ()
    # Checked when a connection opens: drop the pooled one, as a restarted web process would have.
    gateway.app.gateway.external._client = None
    refused_with(query(gateway, token), "127.0.0.1 is a loopback address")
    assert len(provider.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_a_cidr_block_opens_the_servers_in_it(gateway, api, token, settings):
    provider = OpenAIServer(KEY)
    try:
        settings.EGRESS_ALLOW = parse_allow_list("127.0.0.0/8")
        assert post_config(api, custom(f"{provider.url}/v1")).status_code == 200
        assert query(gateway, token).status_code == 200
    finally:
        provider.stop()


@pytest.mark.django_db(transaction=True)
def test_a_redirect_is_not_followed(gateway, fakes, api, token):
    inside = Service(body=b'{"choices": [{"message": {"role": "assistant", "content": "inside"}}]}')
    door = Service(307, "text/plain", b"", location=f"{inside.url}/v1/chat/completions")
    fakes += [door]  # only the door is allowed; inside would be reached only by following the redirect
    try:
        assert post_config(api, custom(f"{door.url}/v1")).status_code == 200
        response = query(gateway, token)
        assert response.status_code == 502, response.text
        assert "inside" not in response.text
        assert inside.requests == []
    finally:
        inside.stop()


# --- answers outside the provider's protocol -------------------------------------------------------

SECRET = "replica-secret-4d1c"  # what the internal service would give away


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, "application/json", json.dumps({"predictions": [SECRET]}).encode()),  # a model replica's answer
        (200, "text/html", f"<html><body>{SECRET}</body></html>".encode()),  # an internal page
        (200, "application/json", json.dumps([SECRET]).encode()),
        (200, "text/plain", SECRET.encode()),
        (500, "text/html", f"<html>{SECRET}</html>".encode()),
        (404, "text/plain", SECRET.encode()),
        (400, "application/json", json.dumps({"detail": SECRET}).encode()),
    ],
)
def test_an_answer_outside_the_protocol_is_never_echoed(gateway, fakes, api, token, status, content_type, body):
    """Even where an admin allowed the address (here: the exact issue 11 attack, a replica's
    ``/invocations``), what comes back is not the provider's protocol and is not shown."""
    service = Service(status, content_type, body)
    fakes.append(service)
    assert post_config(api, custom(f"{service.url}/invocations?")).status_code == 200
    response = query(gateway, token)
    assert response.status_code in (400, 502), response.text
    assert SECRET not in response.text
    assert set(response.json()) == {"error_code", "message"}
    streamed = query(gateway, token, CHAT | {"stream": True})
    assert SECRET not in streamed.text
    assert streamed.status_code in (400, 502), streamed.text


@pytest.mark.django_db(transaction=True)
def test_a_protocol_error_message_is_still_relayed(gateway, fakes, api, token):
    message = "This model's maximum context length is 8192 tokens"
    service = Service(400, "application/json", json.dumps({"error": {"message": message}}).encode())
    fakes.append(service)
    assert post_config(api, custom(f"{service.url}/v1")).status_code == 200
    response = query(gateway, token)
    assert response.status_code == 400
    assert message in response.json()["message"]


def test_the_gateways_client_is_the_pinned_one() -> None:
    """The one shared client opens connections through ``PinnedBackend`` (``httpx`` offers no
    parameter for that: if an upgrade stops it taking effect, this fails, not just the query tests)."""

    async def pool_backend() -> Any:
        models = ExternalModels()
        client = models._http()
        try:
            return client._transport._pool._network_backend  # type: ignore[attr-defined]
        finally:
            await models.aclose()

    assert isinstance(asyncio.run(pool_backend()), egress.PinnedBackend)


@pytest.mark.django_db(transaction=True)
def test_a_key_files_token_uri_is_checked_when_the_gateway_signs_in(gateway, fakes, api, user, token, settings):
    """The key file is a secret (a reference), so its ``token_uri`` is first seen at query time:
    the connection to it is checked like any other, and nothing is sent to a refused one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = GoogleTokenServer(key.public_key(), CLIENT_EMAIL)  # on loopback, not allowed
    vertex = VertexServer(tokens, "my-project", "us-central1")
    fakes.append(vertex)
    settings.PROVIDER_BASE_URLS = {"google-cloud-vertex-ai": vertex.url}
    try:
        config = {
            "project_id": "my-project",
            "region": "us-central1",
            "private_key": store_secret(user, "gcp", "sa", key_file(key, f"{tokens.url}/token")),
        }
        model = external("google-cloud-vertex-ai", "google_cloud_vertex_ai_config", config, name="gemini-2.0-flash")
        assert post_config(api, {"name": "llm", "external_model": model}).status_code == 200
        refused_with(query(gateway, token), "127.0.0.1 is a loopback address")
        assert tokens.requests == [] and vertex.requests == []
    finally:
        tokens.stop()
