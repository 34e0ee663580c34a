"""External-model endpoints queried by the clients people use, unchanged: databricks-langchain's
``ChatDatabricks`` and ``DatabricksEmbeddings``, and the OpenAI client of the SDK's
``serving_endpoints.get_open_ai_client()`` (chat, completions, embeddings and the Responses API,
which the gateway answers with the endpoint's chat model: gateway.responses_api).

The gateway runs in this process (tests.test_external_models' ``gateway`` fixture) and the
provider is the fake OpenAI server of tests.providers on 127.0.0.1. ``ChatDatabricks`` on custom
chat and agent models is in tests/test_client_chat_models.py (it needs the stack's replicas).
"""

from __future__ import annotations

import json

import pytest
from databricks.sdk import WorkspaceClient

from tests import test_external_models as shared
from tests.providers import OpenAIServer

KEY = shared.KEY
gateway, fakes = shared.gateway, shared.fakes
pytestmark = pytest.mark.django_db(transaction=True)

REPLY = "Hello from OpenAI"  # what the fake provider answers a chat
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def openai_endpoints(gateway, fakes, api, user) -> OpenAIServer:  # type: ignore[no-untyped-def]
    """Endpoints ``gpt-chat``, ``gpt-complete`` and ``gpt-embed`` on one fake OpenAI."""
    fake = OpenAIServer(KEY)
    fakes.append(fake)
    shared._openai_endpoint(api, user, fake, "gpt-chat")
    shared._openai_endpoint(api, user, fake, "gpt-complete", task="llm/v1/completions", model="gpt-3.5-turbo-instruct")
    shared._openai_endpoint(api, user, fake, "gpt-embed", task="llm/v1/embeddings", model="text-embedding-3-small")
    return fake


@pytest.fixture
def workspace(gateway, token) -> WorkspaceClient:  # type: ignore[no-untyped-def]
    return WorkspaceClient(host=gateway.url, token=token)


def test_chat_databricks_on_an_external_chat_endpoint_streams_and_not(openai_endpoints, workspace):
    from databricks_langchain import ChatDatabricks

    llm = ChatDatabricks(endpoint="gpt-chat", workspace_client=workspace, max_retries=0, temperature=0.1)
    answer = llm.invoke("Hi")
    assert answer.text == REPLY
    assert answer.usage_metadata["total_tokens"] == 17
    assert openai_endpoints.requests[-1].body["temperature"] == 0.1
    assert "".join(chunk.text for chunk in llm.stream("Hi")) == REPLY

    # The Responses API, through the same endpoint's chat model.
    responses = ChatDatabricks(endpoint="gpt-chat", workspace_client=workspace, max_retries=0, use_responses_api=True)
    assert responses.invoke("Hi").text == REPLY
    assert "".join(chunk.text for chunk in responses.stream("Hi")) == REPLY


def test_databricks_embeddings_on_an_external_embeddings_endpoint(openai_endpoints, gateway, token, monkeypatch):
    from databricks_langchain import DatabricksEmbeddings

    # It queries through mlflow.deployments, which reads the workspace from the environment.
    monkeypatch.setenv("DATABRICKS_HOST", gateway.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", token)
    embeddings = DatabricksEmbeddings(endpoint="gpt-embed")
    assert embeddings.embed_documents(["a", "b"]) == [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]
    assert embeddings.embed_query("a") == [0.1, 0.2, 0.3]
    assert openai_endpoints.requests[-1].body["input"] == ["a"]


def test_the_sdks_openai_client_chats_completes_embeds_and_answers_the_responses_api(openai_endpoints, workspace):
    client = workspace.serving_endpoints.get_open_ai_client(max_retries=0)

    assert client.chat.completions.create(model="gpt-chat", messages=HI).choices[0].message.content == REPLY
    assert client.completions.create(model="gpt-complete", prompt="Say").choices[0].text == " and more text"
    assert len(client.embeddings.create(model="gpt-embed", input=["a", "b", "c"]).data) == 3

    response = client.responses.create(
        model="gpt-chat", instructions="Be brief.", input="Hi", max_output_tokens=30, temperature=0.3
    )
    assert response.output_text == REPLY
    assert response.status == "completed"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (12, 5, 17)
    sent = openai_endpoints.requests[-1].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (sent["max_tokens"], sent["temperature"]) == (30, 0.3)

    conversation = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {"role": "user", "content": "Again"},
    ]
    assert client.responses.create(model="gpt-chat", input=conversation).output_text == REPLY
    assert openai_endpoints.requests[-1].body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]

    events = list(client.responses.create(model="gpt-chat", input="Hi", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    completed = events[-1].response
    assert completed.output_text == REPLY
    # The provider streams its usage chunk (the gateway asks for it), and the Response carries it.
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (9, 3)
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_the_responses_api_refuses_what_a_chat_model_cannot_do(openai_endpoints, gateway, token):
    before = len(openai_endpoints.requests)
    for body, says in (
        ({"model": "gpt-chat", "input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "gpt-chat", "input": [{"type": "input_image", "image_url": "x"}]}, "input_image"),
        ({"model": "gpt-chat", "input": "Hi", "tools": [{"type": "web_search"}]}, "web_search"),
        ({"model": "gpt-chat", "input": []}, "must not be empty"),
        ({"model": "gpt-embed", "input": "Hi"}, "serves llm/v1/embeddings"),
    ):
        response = gateway.post("/serving-endpoints/responses", body, token)
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert says in response.json()["message"]
    assert len(openai_endpoints.requests) == before  # nothing reached the provider


def test_the_responses_api_translates_function_tools_both_ways(openai_endpoints, gateway, token):
    openai_endpoints.reply = "Done"
    tool = {"type": "function", "name": "add", "description": "Add", "parameters": {"type": "object"}}
    body = {
        "model": "gpt-chat",
        "input": [
            {"role": "user", "content": "1+2?"},
            {"type": "function_call", "call_id": "call_1", "name": "add", "arguments": '{"a":1,"b":2}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "3"},
        ],
        "tools": [tool],
        "tool_choice": {"type": "function", "name": "add"},
    }
    response = gateway.post("/serving-endpoints/responses", body, token)
    assert response.status_code == 200, response.text
    assert response.json()["output"][0]["content"][0]["text"] == "Done"
    sent = openai_endpoints.requests[-1].body
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "add", "description": "Add", "parameters": {"type": "object"}}}
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":1,"b":2}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    assert json.loads(response.text)["object"] == "response"
