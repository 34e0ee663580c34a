"""Streamed answers: ``"stream": true`` in a JSON body runs the model's ``predict_stream``.

Databricks answers such a request to a model that streams (MLflow's ``ChatModel``, ``ChatAgent``
and ``ResponsesAgent``, or any pyfunc model with a ``predict_stream``) with server-sent events:
one ``data: <chunk as JSON>`` line per chunk the model yields, then ``data: [DONE]``. MLflow's
own scoring server has no such route; this module is it.

1. The body is parsed by MLflow's scoring-server helpers, exactly as for ``predict``
   (``ServedModel.parse_payload``), so a body that does not fit the model's signature gets the
   same 400.
2. The first chunk is made before anything is sent: a model that does not stream, or that fails
   at once, gets a plain ``{"error_code", "message"}`` answer with its status.
3. Then every chunk is sent as it comes. An error after the first chunk (the status line is sent
   already) becomes a last ``data: {"error_code", "message"}`` event with no ``[DONE]``, the form
   the gateway uses for external models' streams.

The model's generator runs on the predict threads, one ``next()`` at a time, always inside one
``contextvars.Context``: MLflow's predict_stream sets a context variable for the whole stream
and resets it at the end, which fails if the steps ran in different contexts. A client that goes
away mid-stream closes the generator, so the model stops producing.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

from endpoints_app.runtime.model_server.responses import RequestError, client_message
from endpoints_app.runtime.model_server.served_model import ServedModel

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
DONE = b"data: [DONE]\n\n"
_END = object()  # what a step returns once the generator is exhausted
# How long a stream whose client left waits for the chunk being made before closing the model's
# generator (past that the generator is left to the garbage collector, which closes it too).
STEP_WAIT_SECONDS = 30.0


def may_ask(body: bytes) -> bool:
    """Whether the body may ask for a stream: only such bodies are decoded by ``start``."""
    return b'"stream"' in body


def _requested(body: bytes) -> dict[str, Any] | None:
    """The decoded body when it asks for a stream (a JSON object with ``"stream": true``)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # the normal path reports it
    if isinstance(payload, dict) and payload.get("stream") is True:
        return payload
    return None


def event(chunk: Any) -> bytes:
    """One server-sent event carrying a chunk of the model's stream as JSON."""
    data = json.dumps(_get_jsonable_obj(chunk, pandas_orient="records"), cls=NumpyEncoder, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def error_event(error_code: str, message: str) -> bytes:
    return event({"error_code": error_code, "message": message})


class Stream:
    """A model's stream, its first chunk made already; ``send`` relays the rest."""

    def __init__(self, chunks: Iterator[Any], first: Any, context: contextvars.Context, executor: Executor):
        self._chunks = chunks
        self._first = first
        self._context = context
        self._executor = executor
        self._step: Future[Any] | None = None  # the next() running on a predict thread, if any

    async def send(self, send: Send, receive: Receive) -> int:
        """Send the stream as server-sent events; the status to record (499 when the client
        went away before the end)."""
        relay = asyncio.ensure_future(self._relay(send))
        gone = asyncio.ensure_future(_client_gone(receive))
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            relay.cancel()
            gone.cancel()
            await asyncio.gather(relay, gone, return_exceptions=True)
            await self._close()
        if relay.cancelled() or relay.exception() is not None:
            return 499
        return 200

    async def _relay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        chunk = self._first
        while chunk is not _END:
            try:
                data = event(chunk)
            except (TypeError, ValueError) as exc:
                logger.error("a chunk of the model's stream is not JSON-serialisable: %s", exc)
                await _body(send, error_event("INTERNAL_ERROR", f"A chunk of the model's stream is not JSON: {exc}"))
                await _body(send, b"", more=False)
                return
            await _body(send, data)
            try:
                self._step = self._executor.submit(self._context.run, _step, self._chunks)
                chunk = await asyncio.wrap_future(self._step)
            except Exception as exc:
                logger.warning("predict_stream raised %s: %s", type(exc).__name__, exc, exc_info=True)
                message = client_message(f"The model's stream failed: {type(exc).__name__}: {exc}")
                await _body(send, error_event("INTERNAL_ERROR", message))
                await _body(send, b"", more=False)
                return
        await _body(send, DONE, more=False)

    async def _close(self) -> None:
        """Close the generator (in its context, off the loop): a model mid-stream stops. A step
        still running (the client left while the model made a chunk) is waited for first: a
        generator cannot be closed while it runs."""
        close = getattr(self._chunks, "close", None)
        if close is None:
            return
        if self._step is not None and not self._step.done():
            await asyncio.wait({asyncio.wrap_future(self._step)}, timeout=STEP_WAIT_SECONDS)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._context.run, close)
        except Exception:  # a generator that raises while closing: nothing more to send anyway
            logger.debug("closing the model's stream raised", exc_info=True)


async def start(model: ServedModel, body: bytes, executor: Executor) -> Stream | None:
    """The stream a body asks for, its first chunk made (in a worker thread); None when the body
    does not ask for one (the normal path answers it).

    Raises:
        RequestError: the body does not fit, the model does not stream, or it failed before its
            first chunk.
    """
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    opened = await loop.run_in_executor(executor, context.run, _open, model, body)
    if opened is None:
        return None
    chunks, first = opened
    return Stream(chunks, first, context, executor)


def _open(model: ServedModel, body: bytes) -> tuple[Iterator[Any], Any] | None:
    payload = _requested(body)
    if payload is None:
        return None
    request = model.parse_payload(payload)
    # PyFuncModel sets its stream function only for models that have one (MLflow's own check).
    if getattr(model.model, "_predict_stream_fn", None) is None:
        raise RequestError(
            400,
            "BAD_REQUEST",
            'This model does not stream (its pyfunc model has no predict_stream); send the request without "stream".',
        )
    try:
        chunks = model.model.predict_stream(request.data, request.params)
        return chunks, _step(chunks)
    except RequestError:
        raise
    except MlflowException as exc:
        raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
    except NotImplementedError:
        raise RequestError(
            400,
            "BAD_REQUEST",
            'This model does not stream (its predict_stream is not implemented); send the request without "stream".',
        ) from None
    except Exception as exc:
        logger.warning("predict_stream raised %s: %s", type(exc).__name__, exc, exc_info=True)
        raise RequestError(
            400,
            "INVALID_PARAMETER_VALUE",
            client_message(f"The model could not make a prediction for this input: {type(exc).__name__}: {exc}"),
        ) from exc


def _step(chunks: Iterator[Any]) -> Any:
    return next(chunks, _END)


async def _body(send: Send, data: bytes, *, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _client_gone(receive: Receive) -> None:
    """Return once the client has disconnected (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
