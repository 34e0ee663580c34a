"""Tiny MLflow chat and agent models for the tests of the OpenAI-shaped routes and of streaming.

Each is a real MLflow model of the kind Databricks serves behind those routes: a ``ChatModel``
(answers OpenAI chat completions), a ``ChatAgent`` (answers ``{"messages": [...]}``), a
``ResponsesAgent`` (answers the Responses API) and a plain ``PythonModel`` with a
``predict_stream``. Every one answers with the words of ``WORDS``, streamed one word per chunk,
so a test can tell a joined stream from the whole answer. As in ``tests.model_fixtures``, the
classes are pickled by value: the model server loads them without this ``tests`` folder.
"""

from __future__ import annotations

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cloudpickle  # noqa: E402
import mlflow.pyfunc  # noqa: E402
from mlflow.pyfunc import ChatAgent, ChatModel, PythonModel, ResponsesAgent  # noqa: E402
from mlflow.types.agent import ChatAgentChunk, ChatAgentMessage, ChatAgentResponse  # noqa: E402
from mlflow.types.llm import (  # noqa: E402
    ChatChoice,
    ChatChoiceDelta,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatMessage,
    TokenUsageStats,
)
from mlflow.types.responses import ResponsesAgentResponse, ResponsesAgentStreamEvent  # noqa: E402

WORDS = ["Hello", " from", " a", " custom", " model"]
ANSWER = "".join(WORDS)


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        role = message.role if hasattr(message, "role") else message.get("role")
        content = message.content if hasattr(message, "content") else message.get("content")
        if role == "user":
            return content if isinstance(content, str) else str(content)
    return ""


class WordsChatModel(ChatModel):
    """OpenAI chat completions: the words, then `` (you said: <last user message>)``."""

    def predict(self, context, messages, params):  # type: ignore[no-untyped-def,override]
        text = f"{ANSWER} (you said: {last_user_text(messages)})"
        return ChatCompletionResponse(
            choices=[ChatChoice(index=0, message=ChatMessage(role="assistant", content=text))],
            usage=TokenUsageStats(prompt_tokens=3, completion_tokens=5, total_tokens=8),
            model="words",
        )

    def predict_stream(self, context, messages, params):  # type: ignore[no-untyped-def,override]
        for word in WORDS:
            yield ChatCompletionChunk(
                choices=[ChatChunkChoice(index=0, delta=ChatChoiceDelta(role="assistant", content=word))],
                model="words",
            )


class WordsChatAgent(ChatAgent):
    """A ChatAgent: one assistant message; ``custom_inputs`` come back as ``custom_outputs``."""

    def predict(self, messages, context=None, custom_inputs=None):  # type: ignore[no-untyped-def,override]
        return ChatAgentResponse(
            messages=[ChatAgentMessage(role="assistant", content=ANSWER, id="msg-1")],
            custom_outputs=custom_inputs,
        )

    def predict_stream(self, messages, context=None, custom_inputs=None):  # type: ignore[no-untyped-def,override]
        for word in WORDS:
            yield ChatAgentChunk(delta=ChatAgentMessage(role="assistant", content=word, id="msg-1"))


class WordsResponsesAgent(ResponsesAgent):
    """A ResponsesAgent: one output message; streamed as text deltas and the item when done."""

    def predict(self, request):  # type: ignore[no-untyped-def,override]
        said = last_user_text(request.input)
        return ResponsesAgentResponse(output=[self.create_text_output_item(f"{ANSWER} ({said})", "msg-1")])

    def predict_stream(self, request):  # type: ignore[no-untyped-def,override]
        for word in WORDS:
            yield ResponsesAgentStreamEvent(**self.create_text_delta(word, "msg-1"))
        yield ResponsesAgentStreamEvent(
            type="response.output_item.done", item=self.create_text_output_item(ANSWER, "msg-1")
        )


class WordsStreamer(PythonModel):
    """A plain pyfunc model with a ``predict_stream``: one ``{"word", "index"}`` per chunk,
    ``delay`` seconds apart; ``fail_after`` words, then it raises (None: never)."""

    def __init__(self, delay: float = 0.0, fail_after: int | None = None) -> None:
        self.delay = delay
        self.fail_after = fail_after

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return [ANSWER]

    def predict_stream(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        for index, word in enumerate(WORDS * 20 if self.delay else WORDS):
            if self.fail_after is not None and index == self.fail_after:
                raise RuntimeError("the stream ran dry")
            if self.delay:
                time.sleep(self.delay)
            yield {"word": word, "index": index}


@contextmanager
def _pickled_by_value() -> Iterator[None]:
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def save(path: str | Path, python_model: PythonModel) -> Path:
    """Save ``python_model`` as an MLflow model at ``path`` (its signature is MLflow's own for
    chat models and agents, none for a plain streamer)."""
    path = Path(path)
    with _pickled_by_value():
        mlflow.pyfunc.save_model(
            str(path),
            python_model=python_model,
            # Explicit requirements skip mlflow's inference (see tests.model_fixtures).
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"cloudpickle=={cloudpickle.__version__}"],
        )
    return path
