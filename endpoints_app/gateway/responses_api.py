"""The OpenAI Responses API on external chat models: requests become chat completions, answers
(and their streams) become Responses objects (and Responses events).

``client.responses.create(model=<endpoint>, ...)`` reaches ``/serving-endpoints/responses``. A
custom model that speaks the Responses API (MLflow's ``ResponsesAgent``) gets the body as it is
(gateway.custom_models); an endpoint serving an external ``llm/v1/chat`` model gets it here:

1. ``to_chat``: ``instructions`` becomes a system message, ``input`` (a string, or messages and
   function-call items) the chat messages, ``max_output_tokens`` ``max_tokens``, function tools
   chat tools. What has no chat equivalent (images and files, ``previous_response_id``, built-in
   tools) is refused with ``NotTranslatable`` (→ 400) rather than dropped silently.
2. The chat request is answered as any other (providers, fallbacks, guardrails, usage).
3. ``from_chat`` turns the chat completion into a Response: its text as one ``message`` output
   item, each tool call as a ``function_call`` item, tokens as ``input_tokens`` /
   ``output_tokens``; ``finish_reason: "length"`` makes it ``incomplete``.
4. ``ResponsesStream`` turns a chat completion's chunks into the Responses event sequence
   (``response.created`` … ``response.output_text.delta`` … ``response.completed``), each a
   ``data:`` line (no ``event:`` lines: the OpenAI client reads the type from the data); an error
   event of the chat stream becomes an ``error`` event and the stream ends.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from endpoints_app.gateway.providers.base import StreamDecoder, sse

# Chat request fields a Responses request carries under the same name.
SAME_FIELDS = ("temperature", "top_p", "stream", "user", "parallel_tool_calls", "client_request_id", "usage_context")
# Responses request fields that change nothing a chat model does (state and bookkeeping).
IGNORED_FIELDS = ("model", "metadata", "store", "truncation", "service_tier", "include", "background")


class NotTranslatable(Exception):
    """The Responses request asks for something a chat completion cannot do (→ 400)."""


def to_chat(body: Any) -> dict[str, Any]:
    """The chat completions request for a Responses API request."""
    if not isinstance(body, dict):
        raise NotTranslatable("the request body must be a JSON object")
    if body.get("previous_response_id"):
        raise NotTranslatable("'previous_response_id' is not supported: send the whole conversation in 'input'")
    known = {"input", "instructions", "max_output_tokens", "tools", "tool_choice", "text"}
    given = {key for key, value in body.items() if value is not None}
    unknown = sorted(given - known - set(SAME_FIELDS) - set(IGNORED_FIELDS))
    if unknown:
        raise NotTranslatable(f"unsupported field(s) for a chat model: {', '.join(unknown)}")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise NotTranslatable("'instructions' must be a string")
        messages.append({"role": "system", "content": instructions})
    messages += _messages(body.get("input"))
    chat: dict[str, Any] = {"messages": messages}
    for key in SAME_FIELDS:
        if key in body:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = [_tool(tool) for tool in _list(body["tools"], "tools")]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    text_format = ((body.get("text") or {}) if isinstance(body.get("text"), dict) else {}).get("format")
    if text_format is not None and (not isinstance(text_format, dict) or text_format.get("type") != "text"):
        raise NotTranslatable("only plain text output ('text': {'format': {'type': 'text'}}) is supported")
    return chat


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise NotTranslatable(f"'{name}' must be an array")
    return value


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    items = _list(value, "input")
    if not items:
        raise NotTranslatable("'input' must not be empty")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise NotTranslatable(f"input[{index}] must be an object")
        kind = item.get("type", "message")
        if kind == "message" and "role" in item:
            role = item["role"]
            if role not in ("user", "assistant", "system", "developer"):
                raise NotTranslatable(f"input[{index}] has an unknown role {role!r}")
            messages.append(
                {"role": "system" if role == "developer" else role, "content": _text(item.get("content"), index)}
            )
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            previous = messages[-1] if messages else None
            if previous is not None and previous["role"] == "assistant" and "tool_calls" in previous:
                previous["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        else:
            raise NotTranslatable(f"input[{index}] of type {kind!r} is not supported for a chat model")
    return messages


def _text(content: Any, index: int) -> str:
    """A message's content as one string: chat models take text only here."""
    if isinstance(content, str):
        return content
    texts = []
    for part in _list(content, f"input[{index}].content"):
        if not (isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise NotTranslatable(f"input[{index}] holds content of type {kind!r}; only text is supported")
        if not isinstance(part.get("text"), str):
            raise NotTranslatable(f"input[{index}] holds a text part without 'text'")
        texts.append(part["text"])
    return "".join(texts)


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise NotTranslatable(f"tools of type {kind!r} are not supported for a chat model; only 'function'")
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool}
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise NotTranslatable("'tool_choice' must be 'auto', 'none', 'required' or a function")


# --- answers ---------------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def _response(request: dict[str, Any], *, model: str, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": _new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "temperature": request.get("temperature"),
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "text": {"format": {"type": "text"}},
        "usage": None,
        "metadata": request.get("metadata") or {},
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": call["item_id"],
        "call_id": call["call_id"],
        "name": call["name"],
        "arguments": call["arguments"] if status == "completed" else "",
        "status": status,
    }


def from_chat(answer: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The Response for a chat completion (``request`` is the Responses request it answers)."""
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content:
        output.append(_message_item(_new_id("msg"), content))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(
            _call_item(
                {
                    "item_id": _new_id("fc"),
                    "call_id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": function.get("arguments", ""),
                }
            )
        )
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    response = _response(request, model=answer.get("model", ""), status=status, output=output)
    response["usage"] = _usage(answer.get("usage"))
    return response


class ResponsesStream:
    """Responses events from a chat completion's chunks (server-sent events in, and out)."""

    def __init__(self, chunks: AsyncIterator[bytes], request: dict[str, Any], decoder: StreamDecoder) -> None:
        self._chunks = chunks
        # The provider's token counts, which the gateway reads from the stream even when the
        # client did not ask for them (its usage chunk is then not relayed): the Response has them.
        self._decoder = decoder
        self._request = request
        self._sequence = 0
        self._output: list[dict[str, Any]] = []  # items in order: {"kind", ...}
        self._message: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}
        self._model = ""
        self._status = "completed"
        self._usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse(event)

    async def events(self) -> AsyncIterator[bytes]:
        response = _response(self._request, model="", status="in_progress", output=[])
        response_id = response["id"]
        yield self._event("response.created", response=response)
        yield self._event("response.in_progress", response=response)
        try:
            async for raw in self._chunks:
                data = raw.strip()
                if not data.startswith(b"data:"):
                    continue
                data = data[len(b"data:") :].strip()
                if data == b"[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if "error_code" in chunk:  # the gateway's error event: the answer is over
                    yield self._event(
                        "error", code=chunk["error_code"], error_code=chunk["error_code"], message=chunk.get("message")
                    )
                    return
                for event in self._feed(chunk):
                    yield event
            for event in self._finish():
                yield event
            done = _response(self._request, model=self._model, status=self._status, output=self._items())
            usage = self._decoder.usage.as_openai() if self._decoder.usage is not None else None
            done["id"], done["usage"] = response_id, self._usage or _usage(usage)
            yield self._event(
                "response.completed" if self._status == "completed" else "response.incomplete", response=done
            )
        finally:
            await self._chunks.aclose()  # type: ignore[attr-defined]

    def _feed(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        self._model = chunk.get("model") or self._model
        if chunk.get("usage"):
            self._usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._message is None:
                    self._message = {"kind": "message", "item_id": _new_id("msg"), "text": ""}
                    self._output.append(self._message)
                    events.append(self._added(self._message))
                    events.append(
                        self._event(
                            "response.content_part.added",
                            item_id=self._message["item_id"],
                            output_index=self._index(self._message),
                            content_index=0,
                            part={"type": "output_text", "text": "", "annotations": []},
                        )
                    )
                self._message["text"] += text
                events.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=self._message["item_id"],
                        output_index=self._index(self._message),
                        content_index=0,
                        delta=text,
                    )
                )
            for part in delta.get("tool_calls") or ():
                events += self._tool_call(part)
            if choice.get("finish_reason") == "length":
                self._status = "incomplete"
        return events

    def _tool_call(self, part: Any) -> list[bytes]:
        if not isinstance(part, dict):
            return []
        position = part.get("index", 0)
        function = part.get("function") or {}
        call = self._calls.get(position)
        events = []
        if call is None:
            call = {
                "kind": "call",
                "item_id": _new_id("fc"),
                "call_id": part.get("id"),
                "name": function.get("name"),
                "arguments": "",
            }
            self._calls[position] = call
            self._output.append(call)
            events.append(self._added(call))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call["arguments"] += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call["item_id"],
                    output_index=self._index(call),
                    delta=arguments,
                )
            )
        return events

    def _index(self, entry: dict[str, Any]) -> int:
        return next(i for i, e in enumerate(self._output) if e is entry)

    def _item(self, entry: dict[str, Any], status: str = "completed") -> dict[str, Any]:
        if entry["kind"] == "message":
            return _message_item(entry["item_id"], entry["text"], status)
        return _call_item(entry, status)

    def _items(self) -> list[dict[str, Any]]:
        return [self._item(entry) for entry in self._output]

    def _added(self, entry: dict[str, Any]) -> bytes:
        return self._event(
            "response.output_item.added", output_index=self._index(entry), item=self._item(entry, "in_progress")
        )

    def _finish(self) -> list[bytes]:
        events = []
        for index, entry in enumerate(self._output):
            if entry["kind"] == "message":
                part = {"type": "output_text", "text": entry["text"], "annotations": []}
                common = {"item_id": entry["item_id"], "output_index": index, "content_index": 0}
                events.append(self._event("response.output_text.done", text=entry["text"], **common))
                events.append(self._event("response.content_part.done", part=part, **common))
            else:
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=entry["item_id"],
                        output_index=index,
                        arguments=entry["arguments"],
                    )
                )
            events.append(self._event("response.output_item.done", output_index=index, item=self._item(entry)))
        return events
