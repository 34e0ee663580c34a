"""The workspace registry (issue 16, part 1): remote workspaces registered by name, host and token.

The remote is this same Modelfleet (pytest-django's ``live_server``, the real WSGI app on a
loopback port), reached with the databricks-sdk as a Databricks workspace would be. Loopback is
refused by the egress policy, so each test that registers it allows exactly its port with a
settings override, and ``test_loopback_is_refused_without_the_allow_list`` proves the refusal.

Covered: register, list, get, update, delete through the API and the CLI; the token never in an answer, an
audit row or a log line, only in the secrets store, encrypted, and gone with the workspace; a
wrong token a clear 400, or with ``validate=false`` a status that says so and since when; SSRF
(loopback, private, link-local, metadata, encoded addresses, a name that resolves or rebinds to
loopback, plain http, a redirect to another host); names, types and sizes; non-admins refused
writes. The permission matrix (tests/test_access_matrix.py) has a row for each route and verb.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import pytest
from django.test import Client
from rest_framework.test import APIClient

from endpoints_app import egress
from endpoints_app.cli.main import main as cli_main
from endpoints_app.egress import parse_allow_list
from endpoints_app.models import AuditEvent, Endpoint, Role, Secret, UserProfile, Workspace, WorkspaceState
from endpoints_app.remote import client as remote_client
from endpoints_app.remote import transport
from endpoints_app.remote.client import CheckResult
from endpoints_app.services import secrets as secret_services
from endpoints_app.services import workspaces as workspace_services
from endpoints_app.services.tokens import create_token
from tests.conftest import endpoint_body

pytestmark = pytest.mark.django_db(transaction=True)

W = "/api/2.0/modelfleet/workspaces"


# --- fixtures ---------------------------------------------------------------------------------------


def client_for(django_user_model, name: str, role: str) -> APIClient:
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_token(user=user)[1]}")
    return client


@pytest.fixture
def admin(django_user_model) -> APIClient:
    return client_for(django_user_model, "root", Role.ADMIN)


@pytest.fixture
def remote_token(django_user_model) -> str:
    """A token of the remote (this same server): a viewer there, who may list its endpoints."""
    reader = django_user_model.objects.create_user("remote-reader", "reader@example.com", "pw-123456789")
    UserProfile.objects.create(user=reader, role=Role.VIEWER)
    return create_token(user=reader, comment="fleet")[1]


@pytest.fixture
def remote(live_server, settings) -> str:
    """The live server as a workspace host, allowed by the egress policy (its address and port only)."""
    port = urlparse(live_server.url).port
    settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{port},localhost:{port}")
    secret_services._cache.clear()
    return f"http://127.0.0.1:{port}"


def register(client: APIClient, name: str, host: str, token: str, query: str = "") -> Any:
    return client.post(f"{W}{query}", {"name": name, "host": host, "token": token}, format="json")


def refused(response: Any, *phrases: str, status: int = 400, code: str = "INVALID_PARAMETER_VALUE") -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error_code"] == code, body
    for phrase in phrases:
        assert phrase in body["message"], body["message"]
    return str(body["message"])


# --- registering this Modelfleet --------------------------------------------------------------------


def test_an_admin_registers_this_modelfleet_and_its_status_is_ok(admin, remote, remote_token):
    response = register(admin, "staging", remote, remote_token)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["name"] == "staging" and body["kind"] == "REMOTE" and body["host"] == remote
    assert body["status"]["state"] == "OK" and body["status"]["message"] == "0 serving endpoints"
    assert body["status"]["since"] and body["status"]["checked_at"] and body["creator"] == "root@example.com"
    assert body["token_hint"] == "…" + remote_token[-4:]
    assert remote_token not in response.content.decode()

    # The token is in the secrets store, encrypted, in a managed scope no user owns.
    workspace = Workspace.objects.get(name="staging")
    secret = Secret.objects.select_related("scope").get(scope__name="modelfleet-workspaces")
    assert secret.scope.managed and workspace.token_reference == "{{secrets/modelfleet-workspaces/" + secret.key + "}}"
    assert remote_token.encode() not in bytes(secret.encrypted_value)
    assert workspace_services.token_of(workspace) == remote_token

    # One audit row, with a hint of the token and never the token.
    event = AuditEvent.objects.get(action="workspace.create")
    assert (event.actor_name, event.object_type, event.object_name) == ("root", "workspace", "staging")
    assert event.after["token_hint"] == "…" + remote_token[-4:] and event.after["host"] == remote
    assert remote_token not in str(event.after) and remote_token not in str(event.before)


def test_list_and_get_never_show_the_token_and_local_comes_first(admin, remote, remote_token, django_user_model):
    assert register(admin, "staging", remote, remote_token).status_code == 200
    listed = admin.get(W)
    assert listed.status_code == 200
    names = [w["name"] for w in listed.json()["workspaces"]]
    assert names == ["local", "staging"]
    local = listed.json()["workspaces"][0]
    assert local["kind"] == "LOCAL" and local["status"]["state"] == "OK" and "host" not in local
    got = admin.get(f"{W}/staging")
    assert got.status_code == 200 and got.json()["host"] == remote
    viewer = client_for(django_user_model, "vera", Role.VIEWER)  # every global role reads the registry
    assert [w["name"] for w in viewer.get(W).json()["workspaces"]] == ["local", "staging"]
    for response in (listed, got, viewer.get(f"{W}/staging")):
        assert remote_token not in response.content.decode()
        assert "token_reference" not in response.content.decode()


def test_a_wrong_token_is_a_clear_400_and_nothing_is_stored(admin, remote):
    response = register(admin, "staging", remote, "mf-" + "0" * 40)
    message = refused(response, "Workspace 'staging' did not pass its check", "refused the token", "validate=false")
    assert "0" * 40 not in message
    assert not Workspace.objects.filter(name="staging").exists()
    assert not Secret.objects.filter(scope__name="modelfleet-workspaces").exists()
    assert not AuditEvent.objects.filter(action="workspace.create").exists()


def test_with_validate_false_a_wrong_token_is_stored_and_the_status_says_why_and_since_when(
    admin, remote, remote_token
):
    wrong = "mf-" + "1" * 40
    response = register(admin, "staging", remote, wrong, "?validate=false")
    assert response.status_code == 200, response.content
    status = response.json()["status"]
    assert status["state"] == "ERROR" and "refused the token" in status["message"] and status["since"]
    assert wrong not in response.content.decode()
    # The poller's record_check: a second failure keeps "since"; a success moves it.
    workspace = Workspace.objects.get(name="staging")
    since = workspace.status_since
    workspace_services.check_workspace(workspace_id=workspace.pk)
    workspace.refresh_from_db()
    assert workspace.status_since == since and workspace.checked_at > since
    # Fixing the token (validated) clears the error.
    fixed = admin.patch(f"{W}/staging", {"token": remote_token}, format="json")
    assert fixed.status_code == 200, fixed.content
    assert fixed.json()["status"]["state"] == "OK" and fixed.json()["status"]["since"] > status["since"]
    assert fixed.json()["token_hint"] == "…" + remote_token[-4:]


def test_record_check_moves_since_only_when_the_status_changes(admin, remote, remote_token):
    register(admin, "staging", remote, remote_token)
    workspace = Workspace.objects.get(name="staging")
    first = workspace_services.record_check(workspace_id=workspace.pk, result=CheckResult(False, "Cannot reach it"))
    again = workspace_services.record_check(workspace_id=workspace.pk, result=CheckResult(False, "Cannot reach it"))
    assert first is not None and again is not None
    assert first.state == again.state == WorkspaceState.ERROR and again.status_since == first.status_since
    assert again.checked_at >= first.checked_at
    back = workspace_services.record_check(workspace_id=workspace.pk, result=CheckResult(True, "2 serving endpoints"))
    assert back is not None and back.state == WorkspaceState.OK and back.status_since > first.status_since
    assert not AuditEvent.objects.filter(action="workspace.update").exists()  # observations are not changes


def test_update_checks_the_new_token_and_a_new_host_needs_the_token_too(admin, remote, remote_token):
    register(admin, "staging", remote, remote_token)
    refused(admin.patch(f"{W}/staging", {"token": "mf-" + "2" * 40}, format="json"), "refused the token")
    assert workspace_services.token_of(Workspace.objects.get(name="staging")) == remote_token  # unchanged
    refused(
        admin.patch(f"{W}/staging", {"host": remote.replace("127.0.0.1", "localhost")}, format="json"),
        "A new host needs its token too",
    )
    refused(admin.patch(f"{W}/staging", {}, format="json"), "Give host, token or both")
    refused(admin.patch(f"{W}/staging", {"name": "other", "token": remote_token}, format="json"), "cannot be renamed")
    rotated = admin.patch(f"{W}/staging", {"host": remote + "/", "token": remote_token}, format="json")
    assert rotated.status_code == 200 and rotated.json()["host"] == remote
    event = AuditEvent.objects.get(action="workspace.update")
    assert event.before["host"] == remote and event.after["state"] == "OK"
    assert remote_token not in str(event.before) + str(event.after)
    assert Secret.objects.filter(scope__name="modelfleet-workspaces").count() == 1  # overwritten, not added


def test_delete_removes_the_workspace_and_its_secret(admin, remote, remote_token):
    register(admin, "staging", remote, remote_token)
    assert Secret.objects.filter(scope__name="modelfleet-workspaces").count() == 1
    assert admin.delete(f"{W}/staging").status_code == 200
    assert not Workspace.objects.filter(name="staging").exists()
    assert not Secret.objects.filter(scope__name="modelfleet-workspaces").exists()
    event = AuditEvent.objects.get(action="workspace.delete")
    assert event.before["name"] == "staging" and remote_token not in str(event.before)
    refused(admin.get(f"{W}/staging"), "does not exist", status=404, code="RESOURCE_DOES_NOT_EXIST")
    refused(admin.delete(f"{W}/staging"), "does not exist", status=404, code="RESOURCE_DOES_NOT_EXIST")


def test_local_is_always_listed_and_cannot_be_registered_changed_or_removed(admin, remote, remote_token):
    Workspace.objects.all().delete()  # as a flushed or restored database would have it
    assert [w["name"] for w in admin.get(W).json()["workspaces"]] == ["local"]
    refused(
        register(admin, "local", remote, remote_token), "already exists", status=409, code="RESOURCE_ALREADY_EXISTS"
    )
    refused(admin.patch(f"{W}/local", {"token": remote_token}, format="json"), "is this installation")
    refused(admin.delete(f"{W}/local"), "cannot be removed")
    assert Workspace.objects.filter(name="local").count() == 1


def test_a_name_registered_twice_is_a_409(admin, remote, remote_token):
    assert register(admin, "staging", remote, remote_token).status_code == 200
    refused(
        register(admin, "staging", remote, remote_token), "already exists", status=409, code="RESOURCE_ALREADY_EXISTS"
    )


def test_no_endpoint_may_refer_to_a_workspace_token_not_even_an_admins(admin, remote, remote_token, registered_models):
    """Else an admin could hand the token to a model's environment or an external model's key
    and read it there, which changing the host (that needs the token again) does not allow."""
    register(admin, "staging", remote, remote_token)
    reference = Workspace.objects.get(name="staging").token_reference
    body = endpoint_body("leaky", (registered_models["iris"], "1"))
    body["config"]["served_entities"][0]["environment_vars"] = {"WS_TOKEN": reference}
    refused(
        admin.post("/api/2.0/serving-endpoints", body, format="json"),
        "does not exist",
        status=404,
        code="RESOURCE_DOES_NOT_EXIST",
    )
    assert not Endpoint.objects.filter(name="leaky").exists()


def test_a_workspace_whose_token_left_the_secrets_store_shows_it_in_its_status(admin, remote, remote_token):
    register(admin, "staging", remote, remote_token)
    Secret.objects.filter(scope__name="modelfleet-workspaces").delete()  # e.g. an admin's secrets/delete
    workspace = workspace_services.check_workspace(workspace_id=Workspace.objects.get(name="staging").pk)
    assert workspace is not None and workspace.state == WorkspaceState.ERROR
    assert "token is no longer in the secrets store" in workspace.status_message


# --- permissions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.VIEWER, Role.EDITOR, Role.APPROVER])
def test_non_admins_get_403_for_every_write(role, admin, remote, remote_token, django_user_model):
    register(admin, "staging", remote, remote_token)
    other = client_for(django_user_model, "someone", role)
    refused(register(other, "mine", remote, remote_token), "admins", status=403, code="PERMISSION_DENIED")
    refused(
        other.patch(f"{W}/staging", {"token": remote_token}, format="json"),
        "admins",
        status=403,
        code="PERMISSION_DENIED",
    )
    refused(other.delete(f"{W}/staging"), "admins", status=403, code="PERMISSION_DENIED")
    assert other.get(f"{W}/staging").status_code == 200  # reading is any global role's
    assert list(Workspace.objects.filter(kind="REMOTE").values_list("name", flat=True)) == ["staging"]


def test_a_user_without_a_role_sees_only_local_and_anonymous_callers_nothing(
    admin, remote, remote_token, django_user_model
):
    register(admin, "staging", remote, remote_token)
    nobody = client_for(django_user_model, "nobody", Role.NONE)
    assert [w["name"] for w in nobody.get(W).json()["workspaces"]] == ["local"]
    refused(nobody.get(f"{W}/staging"), "does not exist", status=404, code="RESOURCE_DOES_NOT_EXIST")
    assert APIClient().get(W).status_code == 401


# --- SSRF: the egress policy ------------------------------------------------------------------------


def test_loopback_is_refused_without_the_allow_list(admin, live_server, remote_token, settings):
    settings.EGRESS_ALLOW = ()
    port = urlparse(live_server.url).port
    refused(
        register(admin, "staging", f"http://127.0.0.1:{port}", remote_token),
        "a loopback address",
        "MODELFLEET_EGRESS_ALLOW",
    )
    refused(register(admin, "staging", live_server.url, remote_token), "a loopback name")
    assert not Workspace.objects.filter(name="staging").exists()


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("https://127.0.0.1", "a loopback address"),
        ("https://127.1", "a loopback address"),
        ("https://2130706433", "a loopback address"),
        ("https://0x7f.1", "a loopback address"),
        ("https://[::1]", "a loopback address"),
        ("https://[::ffff:127.0.0.1]", "a loopback address"),
        ("https://localhost:8443", "a loopback name"),
        ("https://169.254.169.254", "a cloud metadata address"),
        ("https://metadata.google.internal", "a cloud metadata name"),
        ("https://169.254.10.1", "a link-local address"),
        ("https://[fe80::1]", "a link-local address"),
        ("https://10.1.2.3", "a private address"),
        ("https://172.16.0.9", "a private address"),
        ("https://192.168.1.1", "a private address"),
        ("https://100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("https://0.0.0.0", "an unspecified address"),
        ("https://internal.test", "resolves to a loopback address"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("https://user:pw@workspace.test", "must not carry a user name or password"),
    ],
)
def test_hosts_the_egress_policy_refuses_are_a_400_naming_the_rule(host, rule, admin, dns, remote_token):
    dns.names["internal.test"] = ["8.8.8.8", "127.0.0.1"]  # one bad answer is enough
    refused(register(admin, "ssrf", host, remote_token), rule)
    assert not Workspace.objects.exists() or not Workspace.objects.filter(name="ssrf").exists()


def test_plain_http_is_refused_unless_an_admin_allowed_the_host(admin, dns, remote_token, settings, monkeypatch):
    monkeypatch.setattr(remote_client, "RETRY_TIMEOUT_SECONDS", 1)  # the SDK retries a refused connection
    dns.names["workspace.test"] = ["8.8.8.8"]
    refused(register(admin, "plain", "http://workspace.test", remote_token), "must be an https:// URL", "in clear")
    refused(register(admin, "plain", "http://8.8.8.8:8080", remote_token), "must be an https:// URL")
    # Allowed by name and port: past the scheme rule to the check, which reaches nothing (the test's
    # DNS answers loopback, where port 1 is closed) and is stored with validate=false.
    dns.names["workspace.test"] = ["127.0.0.1"]
    settings.EGRESS_ALLOW = parse_allow_list("workspace.test:1")
    response = register(admin, "plain", "http://workspace.test:1", remote_token, "?validate=false")
    assert response.status_code == 200, response.content
    assert (
        response.json()["status"]["state"] == "ERROR"
        and "Cannot reach http://workspace.test:1" in (response.json()["status"]["message"])
    )


def test_a_name_that_rebinds_to_loopback_after_the_config_check_is_refused_at_connect_time(
    admin, monkeypatch, live_server, remote_token
):
    """A public answer when the URL is checked, loopback when the SDK connects: the connection is
    refused by the adapter (remote.transport), not made."""
    port = urlparse(live_server.url).port
    answers = iter([["8.8.8.8"]])
    monkeypatch.setattr(egress, "resolve_name", lambda host: next(answers, ["127.0.0.1"]))
    response = register(admin, "rebound", f"https://rebind.test:{port}", remote_token)
    refused(response, "refused by the egress policy", "resolves to a loopback address")


class _Recorder(BaseHTTPRequestHandler):
    """Answers every GET: a redirect to ``target`` (when set), else 200; records what it was sent."""

    target = ""
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append((self.path, self.headers.get("Authorization", "")))
        if self.target:
            self.send_response(302)
            self.send_header("Location", self.target)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_a_host_that_does_not_resolve_is_a_clear_400_at_once(admin, remote_token):
    started = time.monotonic()
    refused(register(admin, "ghost", "https://ghost.test", remote_token), "Cannot reach https://ghost.test", "resolve")
    assert time.monotonic() - started < 3  # not retried for the SDK's whole retry budget


def test_a_redirect_is_not_followed_with_the_token(admin, remote_token, settings):
    """A remote answering 302 to another host: requests would send the SDK's Authorization header
    there too; the adapter refuses to follow it, so the check fails and the other host hears nothing."""
    thief_handler = type("Thief", (_Recorder,), {"seen": []})
    thief = ThreadingHTTPServer(("127.0.0.1", 0), thief_handler)
    redirector_handler = type(
        "Redirector", (_Recorder,), {"seen": [], "target": f"http://127.0.0.1:{thief.server_port}/steal"}
    )
    redirector = ThreadingHTTPServer(("127.0.0.1", 0), redirector_handler)
    for server in (thief, redirector):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{redirector.server_port},127.0.0.1:{thief.server_port}")
        response = register(admin, "staging", f"http://127.0.0.1:{redirector.server_port}", remote_token)
        refused(response, "did not pass its check", "a redirect to", "/steal", "not followed")
        assert redirector_handler.seen and redirector_handler.seen[-1][1] == f"Bearer {remote_token}"
        assert thief_handler.seen == []
    finally:
        for server in (thief, redirector):
            server.shutdown()
            server.server_close()


class _Big(BaseHTTPRequestHandler):
    """A remote whose every answer is a serving-endpoints list of 4 KiB."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"endpoints": [{"name": f"e{i}"} for i in range(400)]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_answer_longer_than_the_bound_is_not_read(admin, remote_token, settings, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Big)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings.EGRESS_ALLOW = parse_allow_list(f"127.0.0.1:{server.server_port}")
        host = f"http://127.0.0.1:{server.server_port}"
        assert register(admin, "big", host, remote_token).json()["status"]["message"] == "400 serving endpoints"
        monkeypatch.setattr(transport, "MAX_RESPONSE_BYTES", 1024)
        refused(register(admin, "bigger", host, remote_token), "answered more than 1024 bytes")
    finally:
        server.shutdown()
        server.server_close()


# --- input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"name": "x" * 64, "host": "https://w.test", "token": "t" * 30}, "longer than 63"),
        ({"name": "", "host": "https://w.test", "token": "t" * 30}, "Workspace name is required"),
        ({"name": "a/b", "host": "https://w.test", "token": "t" * 30}, "alphanumeric"),
        ({"name": "ok\n", "host": "https://w.test", "token": "t" * 30}, "alphanumeric"),
        ({"name": 7, "host": "https://w.test", "token": "t" * 30}, "must be a string"),
        ({"name": "ok", "host": ["https://w.test"], "token": "t" * 30}, "host is required and must be a string"),
        ({"name": "ok", "host": "https://w.test", "token": 12345}, "token is required and must be a string"),
        ({"name": "ok", "host": "https://w.test", "token": {"v": 1}}, "token is required and must be a string"),
        ({"name": "ok", "host": "https://w.test"}, "token is required"),
        ({"name": "ok", "token": "t" * 30}, "host is required"),
        ({"name": "ok", "host": "https://w.test", "token": "t" * 4097}, "at most 4096 characters"),
        ({"name": "ok", "host": "https://w.test", "token": "abc\r\nX-Evil: 1"}, "no spaces, line breaks"),
        ({"name": "ok", "host": "https://" + "a" * 600 + ".test", "token": "t" * 30}, "at most 512 characters"),
        ({"name": "ok", "host": "https://w.test/api/2.0", "token": "t" * 30}, "no path, query or fragment"),
        ({"name": "ok", "host": "https://w.test/?x=1", "token": "t" * 30}, "no path, query or fragment"),
        ({"name": "ok", "host": "https://w .test", "token": "t" * 30}, "without spaces"),
        ({"name": "ok", "host": "https://w.test", "token": "t" * 30, "owner": "me"}, "Unknown field 'owner'"),
        (["name", "host"], "must be a JSON object"),
    ],
)
def test_names_types_and_sizes_are_checked(body, phrase, admin):
    message = refused(admin.post(W, body, format="json"), phrase)
    if isinstance(body, dict) and isinstance(body.get("token"), str) and len(body["token"]) > 10:
        assert body["token"] not in message


def test_validate_takes_only_true_or_false(admin, remote, remote_token):
    refused(register(admin, "staging", remote, remote_token, "?validate=maybe"), "validate must be true or false")


# --- the token stays out of logs --------------------------------------------------------------------


def test_the_token_is_never_logged(admin, remote, remote_token, caplog):
    caplog.set_level(logging.DEBUG)
    register(admin, "staging", remote, remote_token)
    register(admin, "wrong", remote, "mf-" + "3" * 40)
    admin.patch(f"{W}/staging", {"token": remote_token}, format="json")
    admin.delete(f"{W}/staging")
    assert caplog.records  # the SDK and the server did log
    assert remote_token not in caplog.text and "3" * 40 not in caplog.text


# --- the CLI ----------------------------------------------------------------------------------------


class PipedStdin(io.StringIO):
    """stdin from a pipe: not a terminal."""

    def isatty(self) -> bool:
        return False


@pytest.fixture
def cli(live_server, django_user_model, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    """Run the CLI as an admin against the live server; returns (exit code, stdout, stderr)."""
    root = django_user_model.objects.create_user("cli-root", "cli-root@example.com", "pw-123456789")
    UserProfile.objects.create(user=root, role=Role.ADMIN)
    monkeypatch.setenv("MODELFLEET_HOST", live_server.url)
    monkeypatch.setenv("MODELFLEET_TOKEN", create_token(user=root)[1])

    def run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", PipedStdin(stdin))
        code = cli_main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_the_cli_adds_lists_shows_updates_and_removes_a_workspace(cli, remote, remote_token):
    code, out, err = cli("workspaces", "add", "staging", "--host", remote, "--token-stdin", stdin=remote_token + "\n")
    assert code == 0, err
    assert "Workspace staging registered: OK: 0 serving endpoints" in err and remote in out
    assert "…" + remote_token[-4:] in out

    code, out, _ = cli("workspaces", "list", "-o", "json")
    listed = json.loads(out)
    assert code == 0 and [w["name"] for w in listed] == ["local", "staging"]
    assert listed[1]["status"]["state"] == "OK" and listed[1]["host"] == remote

    code, out, _ = cli("workspaces", "list")
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "KIND", "HOST", "STATE", "SINCE", "TOKEN", "MESSAGE"]
    assert "staging" in out and "local" in out

    code, out, _ = cli("workspaces", "get", "staging", "-o", "json")
    assert code == 0 and json.loads(out)["token_hint"] == "…" + remote_token[-4:]

    code, out, err = cli("workspaces", "update", "staging", "--token-stdin", stdin=remote_token + "\n")
    assert code == 0 and "Workspace staging updated: OK" in err

    code, out, _ = cli("workspaces", "remove", "staging")
    assert (code, out) == (0, "Workspace staging removed\n")
    assert not Workspace.objects.filter(name="staging").exists()
    assert not Secret.objects.filter(scope__name="modelfleet-workspaces").exists()
    assert [w["name"] for w in json.loads(cli("workspaces", "list", "-o", "json")[1])] == ["local"]


def test_the_cli_never_prints_the_token_even_with_debug(cli, remote, remote_token):
    code, out, err = cli(
        "--debug", "workspaces", "add", "staging", "--host", remote, "--token-stdin", stdin=remote_token + "\n"
    )
    assert code == 0, err
    assert '"token": "***"' in err  # the request body, redacted
    assert remote_token not in out + err
    for argv in (
        ("workspaces", "list"),
        ("workspaces", "get", "staging", "-o", "json"),
        ("--debug", "workspaces", "list"),
    ):
        code, out, err = cli(*argv)
        assert code == 0 and remote_token not in out + err


def test_the_cli_reports_a_wrong_token_and_no_validate_stores_it_with_the_error(cli, remote):
    wrong = "mf-" + "4" * 40
    code, out, err = cli("workspaces", "add", "staging", "--host", remote, "--token-stdin", stdin=wrong + "\n")
    assert code == 1 and out == "" and "did not pass its check" in err and "refused the token" in err
    assert wrong not in err and not Workspace.objects.filter(name="staging").exists()

    code, out, err = cli(
        "workspaces", "add", "staging", "--host", remote, "--token-stdin", "--no-validate", "-o", "json", stdin=wrong
    )
    assert code == 0, err
    assert json.loads(out)["status"]["state"] == "ERROR" and "refused the token" in json.loads(out)["status"]["message"]


def test_the_cli_needs_the_token_on_stdin_and_refuses_an_empty_one(cli, remote, monkeypatch):
    monkeypatch.setattr("sys.stdin", PipedStdin(""))
    code, _, err = cli("workspaces", "add", "staging", "--host", remote)
    assert code == 1 and "--token-stdin" in err
    code, _, err = cli("workspaces", "add", "staging", "--host", remote, "--token-stdin", stdin="\n")
    assert code == 1 and "the token is empty" in err
    code, _, err = cli("workspaces", "remove", "local")
    assert code == 1 and "cannot be removed" in err


# --- the page ---------------------------------------------------------------------------------------


def page_client(django_user_model, name: str, role: str) -> Client:
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw-123456789")
    UserProfile.objects.create(user=user, role=role)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/workspaces/")  # sets the CSRF cookie
    return client


def csrf(client: Client) -> str:
    return client.cookies["csrftoken"].value


def test_the_page_lists_workspaces_and_an_admin_adds_and_removes_one_with_csrf(django_user_model, remote, remote_token):
    client = page_client(django_user_model, "page-root", Role.ADMIN)
    page = client.get("/workspaces/")
    assert page.status_code == 200 and "Add a workspace" in page.content.decode() and ">local<" in page.content.decode()
    form = {"name": "staging", "host": remote, "token": remote_token}
    assert client.post("/workspaces/", form).status_code == 403  # no CSRF token
    assert not Workspace.objects.filter(name="staging").exists()

    added = client.post("/workspaces/", {**form, "csrfmiddlewaretoken": csrf(client)})
    assert added.status_code == 302 and added["Location"] == "/workspaces/"
    html = client.get("/workspaces/").content.decode()
    assert "staging" in html and remote in html and "0 serving endpoints" in html and remote_token[-4:] in html
    assert remote_token not in html
    token_input = re.search(r'<input id="ws-token"[^>]*>', html)
    assert token_input is not None and 'type="password"' in token_input[0] and "value" not in token_input[0]

    assert client.post("/workspaces/staging/delete").status_code == 403  # no CSRF token
    removed = client.post("/workspaces/staging/delete", {"csrfmiddlewaretoken": csrf(client)})
    assert removed.status_code == 302
    assert not Workspace.objects.filter(name="staging").exists()
    assert not Secret.objects.filter(scope__name="modelfleet-workspaces").exists()
    assert client.post("/workspaces/local/delete", {"csrfmiddlewaretoken": csrf(client)}).status_code == 400


def test_the_page_shows_the_error_and_never_echoes_the_token(django_user_model, remote):
    client = page_client(django_user_model, "page-root", Role.ADMIN)
    wrong = "mf-" + "5" * 40
    page = client.post(
        "/workspaces/", {"name": "staging", "host": remote, "token": wrong, "csrfmiddlewaretoken": csrf(client)}
    )
    html = page.content.decode()
    assert page.status_code == 400 and "refused the token" in html
    assert 'value="staging"' in html and f'value="{remote}"' in html and wrong not in html
    # Stored anyway when asked to, with the failure as its status.
    saved = client.post(
        "/workspaces/",
        {"name": "staging", "host": remote, "token": wrong, "skip_check": "1", "csrfmiddlewaretoken": csrf(client)},
    )
    assert saved.status_code == 302
    html = client.get("/workspaces/").content.decode()
    assert "badge-failed" in html and "refused the token" in html and wrong not in html


@pytest.mark.parametrize("role", [Role.VIEWER, Role.APPROVER])
def test_non_admins_see_the_list_without_forms_and_their_posts_get_403(
    role, django_user_model, admin, remote, remote_token
):
    register(admin, "staging", remote, remote_token)
    client = page_client(django_user_model, "page-user", role)
    html = client.get("/workspaces/").content.decode()
    assert "staging" in html and "Add a workspace" not in html and "Remove" not in html
    token = csrf(client)
    form = {"name": "mine", "host": remote, "token": remote_token, "csrfmiddlewaretoken": token}
    assert client.post("/workspaces/", form).status_code == 403
    assert client.post("/workspaces/staging/delete", {"csrfmiddlewaretoken": token}).status_code == 403
    assert set(Workspace.objects.filter(kind="REMOTE").values_list("name", flat=True)) == {"staging"}
