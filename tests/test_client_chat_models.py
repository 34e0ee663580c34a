"""Custom chat and agent models through the real stack, queried by the clients people use.

MLflow's ``ChatModel``, ``ChatAgent`` and ``ResponsesAgent`` (tests.chat_models), registered and
served by real model-server processes, answer:

- the OpenAI client of ``WorkspaceClient.serving_endpoints.get_open_ai_client()`` on
  ``/serving-endpoints/chat/completions`` and ``/serving-endpoints/responses`` (``model`` = the
  endpoint's name), streaming included;
- their own ``/serving-endpoints/<name>/invocations`` with chat bodies, and ``"stream": true``
  there as server-sent events ending in ``data: [DONE]``;
- ``mlflow.deployments.get_deploy_client("databricks")``: ``predict`` and ``predict_stream``;
- ``databricks-langchain``'s ``ChatDatabricks``, streaming and not.

A plain pyfunc model with a ``predict_stream`` streams too; a model without one says so.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from databricks.sdk.service.serving import EndpointCoreConfigInput, ServedEntityInput

from endpoints_app import registry
from tests import chat_models
from tests.chat_models import ANSWER, WORDS
from tests.stack import Stack

# Transactional: the stack's processes must see what the test writes, and the test what they write.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_token")]

TIMEOUT = timedelta(minutes=3)
HI = [{"role": "user", "content": "Hi there"}]
MODELS = {
    "chat": ("main.default.words_chat", chat_models.WordsChatModel),
    "agent": ("main.default.words_agent", chat_models.WordsChatAgent),
    "responses": ("main.default.words_responses", chat_models.WordsResponsesAgent),
    "streamer": ("main.default.words_streamer", chat_models.WordsStreamer),
}


@pytest.fixture(scope="module")
def chat_registered(registered_models, tmp_path_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The chat models in the registry (version 1 each), by kind; plus the constant model (no
    predict_stream) and iris (a table model)."""
    base: Path = tmp_path_factory.mktemp("chat-models")
    for kind, (name, model) in MODELS.items():
        if not registry.list_registered_models(name):
            registry.register_model_dir(chat_models.save(base / kind, model()), name)
    return {kind: name for kind, (name, _) in MODELS.items()} | {
        "constant": registered_models["constant"],
        "iris": registered_models["iris"],
    }


def serve(sdk, endpoints: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Create endpoints {name: registered model} (version 1), all at once, and wait until each is ready."""
    for name, model in endpoints.items():
        sdk.serving_endpoints.create(
            name=name,
            config=EndpointCoreConfigInput(
                name=name,
                served_entities=[
                    ServedEntityInput(
                        entity_name=model, entity_version="1", workload_size="Small", scale_to_zero_enabled=False
                    )
                ]
            ),
        )
    for name in endpoints:
        ready = sdk.serving_endpoints.wait_get_serving_endpoint_not_updating(name, timeout=TIMEOUT)
        assert ready.state.ready.value == "READY", ready.state


def post(stack: Stack, path: str, body: dict, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(
        f"{stack.url}/serving-endpoints/{path}",
        json=body,
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
        **kwargs,
    )


def events(response: requests.Response) -> list[str]:
    """The ``data:`` payloads of a server-sent-event answer, in order (every line must be one)."""
    lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line[len("data: ") :] for line in lines]


@pytest.fixture
def deploy_client(stack, monkeypatch):  # type: ignore[no-untyped-def]
    """MLflow's Databricks deployment client, pointed at the stack the way its users point it at a
    workspace: DATABRICKS_HOST and DATABRICKS_TOKEN."""
    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("DATABRICKS_HOST", stack.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", stack.token)
    return get_deploy_client("databricks")


def test_chat_models_and_agents_answer_the_openai_client_their_invocations_and_mlflow(
    stack, sdk, chat_registered, deploy_client
):
    serve(sdk, {"words-chat": chat_registered["chat"], "words-agent": chat_registered["agent"]})
    client = sdk.serving_endpoints.get_open_ai_client(max_retries=0)

    # A ChatModel answers OpenAI chat completions, whole and streamed.
    completion = client.chat.completions.create(model="words-chat", messages=HI)
    assert completion.choices[0].message.content == f"{ANSWER} (you said: Hi there)"
    assert completion.usage.total_tokens == 8
    stream = client.chat.completions.create(model="words-chat", messages=HI, stream=True)
    assert [chunk.choices[0].delta.content for chunk in stream] == WORDS

    # A ChatAgent's answer comes back as it made it: {"messages": [...]} (ChatDatabricks reads that).
    answer = client.chat.completions.create(model="words-agent", messages=HI).to_dict()
    assert answer["messages"] == [{"role": "assistant", "content": ANSWER, "id": "msg-1"}]

    # Their own invocations take chat bodies, and stream with "stream": true.
    response = post(stack, "words-agent/invocations", {"messages": HI, "custom_inputs": {"k": "v"}})
    assert response.status_code == 200, response.text
    assert response.json()["custom_outputs"] == {"k": "v"}
    assert response.headers["served-model-name"] == "words_agent-1"
    response = post(stack, "words-agent/invocations", {"messages": HI, "stream": True}, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    assert [json.loads(p)["delta"]["content"] for p in payloads[:-1]] == WORDS

    # mlflow.deployments: predict, and predict_stream (data: lines, not JSON).
    assert deploy_client.predict(endpoint="words-chat", inputs={"messages": HI})["choices"][0]["message"]["content"]
    chunks = list(deploy_client.predict_stream(endpoint="words-chat", inputs={"messages": HI}))
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == WORDS
    chunks = list(deploy_client.predict_stream(endpoint="words-agent", inputs={"messages": HI}))
    assert "".join(c["delta"]["content"] for c in chunks) == ANSWER

    # databricks-langchain's ChatDatabricks on both, streaming and not.
    from databricks_langchain import ChatDatabricks

    llm = ChatDatabricks(endpoint="words-chat", workspace_client=sdk, max_retries=0)
    assert llm.invoke("Hi there").text == f"{ANSWER} (you said: Hi there)"
    assert "".join(chunk.text for chunk in llm.stream("Hi there")) == ANSWER
    agent = ChatDatabricks(endpoint="words-agent", workspace_client=sdk, max_retries=0)
    # ChatDatabricks keeps a ChatAgent's messages as the answer's content, as they came.
    assert agent.invoke("Hi there").content == [{"role": "assistant", "content": ANSWER, "id": "msg-1"}]
    assert "".join(chunk.text for chunk in agent.stream("Hi there")) == ANSWER


def test_a_responses_agent_answers_the_responses_api(stack, sdk, chat_registered):
    serve(sdk, {"words-responses": chat_registered["responses"]})
    client = sdk.serving_endpoints.get_open_ai_client(max_retries=0)

    response = client.responses.create(model="words-responses", input="Hi there")  # a plain string input
    assert response.output_text == f"{ANSWER} (Hi there)"
    response = client.responses.create(model="words-responses", input=HI)
    assert response.output[0].content[0].text == f"{ANSWER} (Hi there)"

    deltas = [
        event.delta
        for event in client.responses.create(model="words-responses", input=HI, stream=True)
        if event.type == "response.output_text.delta"
    ]
    assert deltas == WORDS

    from databricks_langchain import ChatDatabricks

    llm = ChatDatabricks(endpoint="words-responses", workspace_client=sdk, use_responses_api=True, max_retries=0)
    assert llm.invoke("Hi there").text == f"{ANSWER} (Hi there)"
    assert "".join(chunk.text for chunk in llm.stream("Hi there")) == ANSWER


def test_a_pyfunc_model_with_predict_stream_streams_and_others_say_they_do_not(
    stack, sdk, chat_registered, deploy_client
):
    serve(sdk, {"streamer": chat_registered["streamer"], "constant": chat_registered["constant"]})

    chunks = list(deploy_client.predict_stream(endpoint="streamer", inputs={"inputs": ["anything"]}))
    assert chunks == [{"word": word, "index": index} for index, word in enumerate(WORDS)]
    assert deploy_client.predict(endpoint="streamer", inputs={"inputs": ["anything"]}) == {"predictions": [ANSWER]}

    # No predict_stream: a clear 400, before any event.
    response = post(stack, "constant/invocations", {"inputs": [[1]], "stream": True})
    assert response.status_code == 400
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert "does not stream" in response.json()["message"]
    with pytest.raises(requests.HTTPError, match="does not stream"):
        list(deploy_client.predict_stream(endpoint="constant", inputs={"inputs": [[1]]}))
    # Without "stream" it answers as ever.
    assert post(stack, "constant/invocations", {"inputs": [[1]]}).json() == {"predictions": ["a"]}
