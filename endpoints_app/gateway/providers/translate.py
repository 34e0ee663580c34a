"""Building blocks shared by the providers whose wire format is not OpenAI's (Cohere, AI21 Labs,
Amazon Bedrock, Google): reading the text out of OpenAI-shaped messages and prompts, and writing
OpenAI-shaped answers, stream chunks and embedding lists back."""

from __future__ import annotations

from typing import Any

from endpoints_app.gateway.providers.base import (
    COMPLETIONS,
    RequestRejected,
    StreamDecoder,
    Usage,
    completion_id,
    now_s,
)


def plain_text(content: Any, where: str, provider: str) -> str:
    """A message's content as one string: a string, or an array of text parts joined."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestRejected(
                    f"{where}.content[{i}] is of type '{kind}'; only text parts can be sent to {provider} for now"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise RequestRejected(f"{where}.content must be a string or an array of text parts")


def chat_messages(raw: list[dict[str, Any]], provider: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The system prompts, and the ``(role, text)`` of the user and assistant messages, in order."""
    system: list[str] = []
    messages: list[tuple[str, str]] = []
    for i, message in enumerate(raw):
        role, where = message["role"], f"messages[{i}]"
        if role == "system":
            system.append(plain_text(message.get("content"), where, provider))
        elif role in ("user", "assistant"):
            messages.append((role, plain_text(message.get("content"), where, provider)))
        else:
            raise RequestRejected(f"{where}.role '{role}' cannot be sent to {provider}; use system, user or assistant")
    if not messages:
        raise RequestRejected(f"{provider} needs at least one user message besides the system prompt")
    return system, messages


def prompt_text(body: dict[str, Any], provider: str) -> str:
    """A completions request's one prompt (a string, or an array of one string)."""
    prompt = body["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise RequestRejected(f"{provider} takes one prompt per request; send 'prompt' as one string")
        prompt = prompt[0]
    return prompt


def input_texts(body: dict[str, Any], provider: str) -> list[str]:
    """An embeddings request's ``input`` as a list of strings (token-id arrays are refused)."""
    value = body["input"]
    texts = [value] if isinstance(value, str) else value
    if not all(isinstance(t, str) for t in texts):
        raise RequestRejected(f"{provider} embeds text: 'input' must be a string or an array of strings")
    return texts


def one_choice(body: dict[str, Any], provider: str) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestRejected(f"{provider} answers one message per request; 'n' must be 1")


def openai_answer(
    *,
    task: str,
    id: str | None,  # noqa: A002 - OpenAI's field name
    model: str,
    choices: list[tuple[str, str | None]],
    usage: Usage,
) -> dict[str, Any]:
    """A ``chat.completion`` (or ``text_completion``) of ``(text, finish_reason)`` choices."""
    common = {"id": id or completion_id(), "created": now_s(), "model": model, "usage": usage.as_openai()}
    if task == COMPLETIONS:
        return {
            **common,
            "object": "text_completion",
            "choices": [
                {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
                for i, (text, finish) in enumerate(choices)
            ],
        }
    return {
        **common,
        "object": "chat.completion",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
            for i, (text, finish) in enumerate(choices)
        ],
    }


def embeddings_answer(*, model: str, vectors: list[list[float]], prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens},
    }


class ChunkDecoder(StreamDecoder):
    """A stream decoder that writes OpenAI chunks (``chat.completion.chunk``, or ``text_completion``
    for the completions task); subclasses read the provider's events in ``feed``."""

    def __init__(self, *, task: str, model: str) -> None:
        super().__init__()
        self.task = task
        self.id = completion_id()
        self.model = model
        self.created = now_s()
        self.usage = Usage()
        self._started: set[int] = set()

    def chunk(self, *, index: int = 0, text: str = "", finish: str | None = None) -> dict[str, Any]:
        """One chunk for choice ``index``: its next ``text``, or its ``finish`` reason. The first
        chunk of a chat choice says the role. Usage is the counts so far, in every chunk (as
        Databricks sends it, reference §4.2)."""
        if self.task == COMPLETIONS:
            choice: dict[str, Any] = {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        else:
            delta: dict[str, Any] = {}
            if index not in self._started:
                delta["role"] = "assistant"
            if text or index not in self._started:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "finish_reason": finish}
            kind = "chat.completion.chunk"
        self._started.add(index)
        assert self.usage is not None
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage.as_openai(),
        }
