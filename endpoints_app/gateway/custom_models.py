"""What the gateway does for custom models beyond forwarding a body: the OpenAI client's routes
and streamed answers.

Custom models that speak chat (MLflow's ``ChatModel``, ``ChatAgent``) or the Responses API
(``ResponsesAgent``) are queried the way Databricks lets them be: through the OpenAI client's
routes (``/serving-endpoints/chat/completions``, ``/completions``, ``/embeddings``,
``/responses``, the endpoint named by the body's ``model``) as well as at their own
``/invocations``. The gateway sends the body on to a replica as it came, less ``model`` (the
endpoint's name, which the model's signature does not know); the model's answer comes back as the
model made it (a ``ChatAgent`` answers ``{"messages": [...]}``, which the Databricks clients read
as such). The one change: the Responses API takes a plain string as ``input``, which a
``ResponsesAgent``'s signature does not, so it becomes the one user message it stands for.

A body with ``"stream": true`` asks the replica for server-sent events (the model's
``predict_stream``, model_server/streaming.py), which the gateway relays event by event.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from endpoints_app.gateway import jsonbody

# The OpenAI client's Responses API route; Databricks has no task of that name for external models.
RESPONSES = "llm/v1/responses"
# Bodies up to this size are decoded on the event loop to see whether they ask for a stream.
INLINE_DECODE_MAX_BYTES = 64 * 1024


def body_for_model(task: str, body: dict[str, Any]) -> bytes:
    """The body a custom model gets for a request to one of the OpenAI client's routes."""
    forwarded = {key: value for key, value in body.items() if key != "model"}
    if task == RESPONSES and isinstance(forwarded.get("input"), str):
        forwarded["input"] = [{"role": "user", "content": forwarded["input"]}]
    return json.dumps(forwarded, separators=(",", ":")).encode()


async def asks_for_stream(body: bytes, parsed: Any = None) -> bool:
    """Whether the body is a JSON object with ``"stream": true``; ``parsed`` is the body already
    decoded, when it was. Bodies that do not mention ``"stream"`` are not decoded; large ones are
    decoded off the event loop."""
    if parsed is None:
        if b'"stream"' not in body:
            return False
        try:
            if len(body) > INLINE_DECODE_MAX_BYTES:
                parsed = await asyncio.to_thread(jsonbody.loads, body)
            else:
                parsed = jsonbody.loads(body)
        except ValueError:  # TooDeep is one: the model answers such a body itself
            return False
    return isinstance(parsed, dict) and parsed.get("stream") is True
