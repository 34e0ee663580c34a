"""Guardrails read the text of agents' and the Responses API's bodies too: a ``ResponsesAgent``'s
input items and instructions, its output items and stream events, a ``ChatAgent``'s stream chunks.
(The chat shapes are in tests/test_guardrails_ratelimit.py.)"""

from __future__ import annotations

import pytest

from endpoints_app.gateway import guardrails
from endpoints_app.gateway.guardrails import Blocked, Guardrail

MASK = Guardrail.from_config({"pii": {"behavior": "MASK"}})


def test_responses_api_input_items_and_instructions_are_checked():
    body = {
        "instructions": "reply to a@b.io",
        "input": [
            {"role": "user", "content": "I am bob@example.com"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "SSN 123-45-6789"}]},
            {"type": "function_call_output", "call_id": "c1", "output": "ip 8.8.8.8"},
        ],
    }
    guardrails.apply(MASK, body, direction="input")
    assert body["instructions"] == "reply to <EMAIL_ADDRESS>"
    assert body["input"][0]["content"] == "I am <EMAIL_ADDRESS>"
    assert body["input"][1]["content"][0]["text"] == "SSN <US_SSN>"
    assert body["input"][2]["output"] == "ip <IP_ADDRESS>"

    rail = Guardrail.from_config({"invalid_keywords": ["falcon"]})
    with pytest.raises(Blocked, match="falcon"):
        guardrails.apply(rail, {"input": [{"role": "user", "content": "about falcon"}]}, direction="input")


def test_agents_answers_and_stream_events_are_checked():
    response = {"object": "response", "output": [{"type": "message", "content": [{"type": "output_text", "text": "a@b.io"}]}]}
    guardrails.apply(MASK, response, direction="output")
    assert response["output"][0]["content"][0]["text"] == "<EMAIL_ADDRESS>"

    delta_event = {"type": "response.output_text.delta", "item_id": "m1", "delta": "mail a@b.io"}
    guardrails.apply(MASK, delta_event, direction="output")
    assert delta_event["delta"] == "mail <EMAIL_ADDRESS>"

    done_event = {"type": "response.output_item.done", "item": {"content": [{"type": "output_text", "text": "a@b.io"}]}}
    guardrails.apply(MASK, done_event, direction="output")
    assert done_event["item"]["content"][0]["text"] == "<EMAIL_ADDRESS>"

    agent_chunk = {"delta": {"role": "assistant", "content": "a@b.io", "id": "m1"}}
    guardrails.apply(MASK, agent_chunk, direction="output")
    assert agent_chunk["delta"]["content"] == "<EMAIL_ADDRESS>"

    other = {"type": "response.function_call_arguments.delta", "delta": '{"to": "a@b.io"}'}
    guardrails.apply(MASK, other, direction="output")  # not text shown to a reader: left as it is
    assert other["delta"] == '{"to": "a@b.io"}'
