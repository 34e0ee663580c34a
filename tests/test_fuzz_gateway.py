"""Hypothesis fuzz of the query path's body parsing: whatever bytes or JSON a caller sends, each
parsing step answers a value or its own 4xx-style error, never another exception (a 500).

- the gateway's JSON reading (``Gateway._json``: bounded nesting) and ``client_request_id``;
- the OpenAI-shaped checks for external models (``check_openai_request``) and each provider's
  translation of a checked body (``build_request``), for chat, completions and embeddings;
- the model server's input parsing for custom models (``dataframe_split``/``dataframe_records``,
  ``instances``, ``inputs``), fast path and full MLflow path, on a real scikit-learn model;
- the PII guardrail: its fast path (seeded chunks, rewritten patterns, checks in bulk) finds and
  masks exactly what the six patterns as first written find (``tests/pii_reference.py``), on texts
  drawn from the characters the patterns care about, read in chunks of a few characters too.

Bounded: about 200 examples a test in `make fuzz`, a tenth of that in `make test`
(tests.conftest.fuzz_examples), derandomized (CI sees the same cases), no shrinking database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from endpoints_app.gateway import guardrails
from endpoints_app.gateway.app import Gateway, GatewayError
from endpoints_app.gateway.payloads import client_request_id
from endpoints_app.gateway.providers import PROVIDERS
from endpoints_app.gateway.providers.base import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    NotTranslated,
    RequestRejected,
    UpstreamRequest,
    check_openai_request,
)
from tests import pii_reference
from tests.conftest import fuzz_examples
from tests.model_fixtures import save_iris_model

FUZZ = settings(
    max_examples=fuzz_examples(200),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and ±Infinity too: Python's json.loads accepts them
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40,
)
KEY = "sk-fuzz-not-a-real-key"


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- the gateway's JSON reading ----------------------------------------------------------------------


def _gateway_parse(body: bytes) -> Any:
    try:
        return Gateway._json(body)
    except GatewayError as exc:
        assert exc.status == 400, exc
        return exc


@FUZZ
@given(st.binary(max_size=300) | json_values.map(_encode) | st.integers(1, 100_000).map(_nested))
def test_the_gateway_reads_any_body_as_json_or_answers_400(body: bytes) -> None:
    _gateway_parse(body)


@FUZZ
@given(json_values)
def test_the_gateway_reads_back_any_json_it_is_sent(value: Any) -> None:
    parsed = _gateway_parse(_encode(value))
    if not isinstance(parsed, GatewayError) and "NaN" not in json.dumps(value):
        assert parsed == value


def test_a_hundred_thousand_brackets_are_a_400_not_a_recursion_error() -> None:
    assert isinstance(_gateway_parse(_nested(100_000)), GatewayError)
    assert isinstance(_gateway_parse(b"[" * 100_000), GatewayError)


@FUZZ
@given(
    st.binary(max_size=200)
    | json_values.map(_encode)
    | st.dictionaries(st.just("client_request_id"), json_values, min_size=1).map(_encode)
    | st.integers(1, 100_000).map(lambda n: b'{"client_request_id": ' + _nested(n) + b"}")
)
def test_client_request_id_is_always_a_string(body: bytes) -> None:
    assert isinstance(client_request_id(body), str)


# --- external models: OpenAI-shaped checks and provider translations -----------------------------------

messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool"]) | st.text(max_size=5)},
        optional={"content": json_values, "name": json_values, "tool_calls": json_values},
    ),
    min_size=1,
    max_size=4,
)
openai_fields = {
    "stream": st.booleans() | json_values,
    "max_tokens": st.integers(-5, 10**20) | json_values,
    "n": st.integers(-5, 5),
    "temperature": st.floats() | json_values,
    "stop": json_values,
    "extra_params": st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
    "tools": json_values,
    "top_p": json_values,
}
shaped_bodies = {
    CHAT: st.fixed_dictionaries({"messages": messages | json_values}, optional=openai_fields),
    COMPLETIONS: st.fixed_dictionaries(
        {"prompt": st.text(max_size=20) | st.lists(json_values, min_size=1, max_size=3) | json_values},
        optional=openai_fields,
    ),
    EMBEDDINGS: st.fixed_dictionaries(
        {"input": st.text(max_size=20) | st.lists(json_values, min_size=1, max_size=3) | json_values},
        optional=openai_fields,
    ),
}
any_body = {task: strategy | json_values for task, strategy in shaped_bodies.items()}


@FUZZ
@pytest.mark.parametrize("task", [CHAT, COMPLETIONS, EMBEDDINGS])
@given(data=st.data())
def test_openai_shaped_checks_accept_or_reject_any_body(task: str, data: st.DataObject) -> None:
    body = data.draw(any_body[task])
    try:
        checked = check_openai_request(task, body)
    except RequestRejected:
        return
    assert isinstance(checked, dict)


# (provider, config, credentials as sign_in hands them to build_request, base URL)
PROVIDER_CASES = [
    ("openai", {}, {"openai_api_key": KEY}, "https://api.openai.com/v1"),
    (
        "openai",
        {
            "openai_api_type": "azure",
            "openai_api_base": "https://res.openai.azure.com/",
            "openai_deployment_name": "gpt4o",
            "openai_api_version": "2024-06-01",
        },
        {"openai_api_key": KEY},
        "",
    ),
    ("anthropic", {}, {"anthropic_api_key": KEY}, "https://api.anthropic.com"),
    ("cohere", {}, {"cohere_api_key": KEY}, "https://api.cohere.com"),
    ("ai21labs", {}, {"ai21labs_api_key": KEY}, "https://api.ai21.com"),
    ("palm", {}, {"palm_api_key": KEY}, "https://generativelanguage.googleapis.com"),
    (
        "custom",
        {"custom_provider_url": "https://llm.example.com/v1", "bearer_token_auth": {}},
        {"bearer_token_auth.token": KEY},
        "",
    ),
    (
        "databricks-model-serving",
        {"databricks_workspace_url": "https://ws.example.com"},
        {"databricks_api_token": KEY},
        "",
    ),
]


@settings(FUZZ, max_examples=fuzz_examples(25, least=5))  # 25 × 24 (provider, task) pairs in `make fuzz`
@pytest.mark.parametrize(("provider_name", "config", "credentials", "base_url"), PROVIDER_CASES)
@pytest.mark.parametrize("task", [CHAT, COMPLETIONS, EMBEDDINGS])
@given(data=st.data())
def test_each_provider_translates_or_rejects_any_checked_body(
    provider_name: str, config: dict, credentials: dict, base_url: str, task: str, data: st.DataObject
) -> None:
    provider = PROVIDERS[provider_name]
    if task not in provider.tasks:
        return
    try:
        body = check_openai_request(task, data.draw(shaped_bodies[task]))
    except RequestRejected:
        return
    try:
        request = provider.build_request(
            task=task, model="m-1", config=config, credentials=credentials, body=body, base_url=base_url
        )
    except (RequestRejected, NotTranslated):
        return
    assert isinstance(request, UpstreamRequest)
    httpx.Request("POST", request.url, headers=request.headers, **request.body())  # encoded as the gateway sends it


# --- custom models: the model server's input parsing -------------------------------------------------


@pytest.fixture(scope="module")
def served_iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real scikit-learn model, loaded as the model server loads it (in this process)."""
    from endpoints_app.runtime.model_server.served_model import ServedModel

    path: Path = save_iris_model(tmp_path_factory.mktemp("fuzz-models") / "iris")
    yield ServedModel(mlflow.pyfunc.load_model(str(path)))


COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
cells = st.floats(-10, 10) | st.integers(-(10**20), 10**20) | json_values
rows = st.lists(cells, min_size=0, max_size=5)
records = st.dictionaries(st.sampled_from(COLUMNS) | st.text(max_size=5), cells, max_size=5)
model_inputs = (
    st.fixed_dictionaries(
        {
            "dataframe_split": st.fixed_dictionaries(
                {},
                optional={
                    "columns": st.lists(st.sampled_from(COLUMNS) | json_values, max_size=5) | json_values,
                    "data": st.lists(rows, max_size=4) | json_values,
                    "index": json_values,
                },
            )
            | json_values
        },
        optional={"params": json_values},
    )
    | st.fixed_dictionaries({"dataframe_records": st.lists(records, max_size=4) | json_values})
    | st.fixed_dictionaries({"instances": st.lists(records | rows, max_size=4) | json_values})
    | st.fixed_dictionaries({"inputs": st.lists(records | rows, max_size=4) | records | json_values})
    | json_values
)


def _predict(served: Any, body: bytes) -> None:
    from endpoints_app.runtime.model_server.responses import RequestError

    try:
        answer = served.predict_json(body)
    except RequestError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc)
        return
    assert "predictions" in json.loads(answer)


@FUZZ
@given(model_inputs)
def test_the_model_server_answers_any_json_input_or_a_400(served_iris: Any, payload: Any) -> None:
    body = _encode(payload)
    _predict(served_iris, body)
    parsed, fast = served_iris.read_fast(body)  # the fast path's reading never raises either
    if fast is not None:
        assert isinstance(parsed, dict) and fast.rows >= 1


@FUZZ
@given(st.binary(max_size=300) | st.integers(1, 100_000).map(_nested))
def test_the_model_server_answers_any_bytes_or_a_400(served_iris: Any, body: bytes) -> None:
    _predict(served_iris, body)
    served_iris.read_fast(body)


def test_floats_that_json_cannot_carry_are_a_400(served_iris: Any) -> None:
    body = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[math.inf, 1, 1, 1]]}}).encode()
    _predict(served_iris, body)


def test_a_hundred_thousand_brackets_at_the_replica_are_a_400(served_iris: Any) -> None:
    from endpoints_app.runtime.model_server.responses import RequestError
    from endpoints_app.runtime.model_server.served_model import NOT_JSON

    with pytest.raises(RequestError) as caught:
        served_iris.predict_json(_nested(100_000))
    assert caught.value.status == 400 and caught.value.error_code == "MALFORMED_REQUEST"
    assert served_iris.read_fast(_nested(100_000)) == (NOT_JSON, None)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_number_json_cannot_carry_in_an_external_request_is_rejected(number: float) -> None:
    """Python's decoder reads NaN and Infinity; httpx would refuse to send them (a 500)."""
    with pytest.raises(RequestRejected, match="finite"):
        check_openai_request(CHAT, {"messages": [{"role": "user", "content": "hi"}], "temperature": number})


# --- the PII guardrail's fast path ---------------------------------------------------------------------

# Alphabets that crowd several patterns into the same few characters (digits of two scripts next to
# separators, letters next to digits, "@" next to dots), and whole findings to splice in.
PII_ALPHABETS = [
    "0123456789 .-",
    "19 -.()+",
    "1a.@-+_",
    "ABZ09 12",
    "aA1.@ -",
    "1.2.5 ",
    "\u0661\u06629 -.@a\u00e9",
    "AB12 .@-()+x\n",
    "a@.c-om+x,(1",
]
PII_PIECES = [
    "john.doe@example.com",
    "x@y.co",
    "4111 1111 1111 1111",
    "4111-1111-1111-1112",
    "123-45-6789",
    "000-12-3456",
    "DE89 3704 0044 0532 0130 00",
    "AB12 ",
    "10.0.0.1",
    "255.255.255.256",
    "+1 415-555-0100",
    "(415) 555 0100",
    "a@b.com.",
    "-x@c.de",
    "a.",
    "1-",
    "@",
    ",",
]
pii_texts = st.one_of([st.text(alphabet=alphabet, max_size=1000) for alphabet in PII_ALPHABETS]) | st.lists(
    st.sampled_from(PII_PIECES) | st.text(alphabet="1 .-@a,", max_size=3), max_size=80
).map("".join)


@settings(FUZZ, max_examples=fuzz_examples(1500))
@given(pii_texts, st.sampled_from([65, 80, 100, guardrails.CHUNK]))
def test_the_pii_fast_path_finds_and_masks_what_the_original_patterns_do(text: str, chunk: int) -> None:
    original_chunk = guardrails.CHUNK
    guardrails.CHUNK = chunk  # short chunks (it must exceed REACH) put region edges all over a short text
    try:
        assert guardrails.find_pii(text) == pii_reference.find_pii(text)
        assert guardrails.mask_pii(text) == pii_reference.mask_pii(text)
    finally:
        guardrails.CHUNK = original_chunk
