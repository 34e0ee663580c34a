"""What a replica answers with: ``{"predictions": ...}`` bodies, ``{"error_code", "message"}``
bodies, and the exception (RequestError) that carries a refusal from wherever it is decided to
the response.

Both prediction paths (the full MLflow path in served_model.py and the scikit-learn fast path in
fastpath.py) serialise predictions here, which is what makes their answers the same bytes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

logger = logging.getLogger(__name__)

JSON_HEADERS = [(b"content-type", b"application/json")]
# Error messages quote MLflow and model exceptions, which can embed the whole input; cap them.
MAX_MESSAGE_CHARS = 2000

# MLflow's schema-enforcement message starts by quoting the whole input DataFrame; the schema
# and the reason that follow it are what the caller needs.
_SCHEMA_DATA_DUMP = re.compile(r"^Failed to enforce schema of data '.*?' with schema '", re.DOTALL)


class RequestError(Exception):
    """A request the server refuses; carried to the response as ``{"error_code", "message"}``."""

    def __init__(
        self, status: int, error_code: str, message: str, *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers


def method_not_allowed(method: str, path: str, allowed: str) -> RequestError:
    return RequestError(
        405,
        "METHOD_NOT_ALLOWED",
        f"{method} is not allowed on {path}; use {allowed}.",
        headers=[(b"allow", allowed.encode())],
    )


def client_message(message: str) -> str:
    """Make an MLflow/model exception message fit to return to the caller.

    Drops MLflow's dump of the input data, caps the length, and rewrites the one phrase
    ("Unexpected error") that makes the Databricks SDK retry a failed call for five minutes.
    """
    message = _SCHEMA_DATA_DUMP.sub("Failed to enforce the model's input schema '", message, count=1)
    message = message.replace("Unexpected error", "unexpected error")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return message


def error_body(error_code: str, message: str) -> bytes:
    return json.dumps({"error_code": error_code, "message": message}).encode()


def predictions_json(predictions: Any, *, wrap: bool) -> bytes:
    """The response body for a model's output: ``{"predictions": ...}``, or the output itself
    when ``wrap`` is false (chat/completions/embeddings bodies, as MLflow answers them).

    Raises:
        RequestError: the output cannot be converted to JSON (a 500: the model's fault).
    """
    # Same conversion as mlflow's predictions_to_json, but json.dumps rather than
    # json.dump: only the one-shot path uses the C encoder, several times faster.
    jsonable = _get_jsonable_obj(predictions, pandas_orient="records")
    document = {"predictions": jsonable} if wrap else jsonable
    try:
        return json.dumps(document, cls=NumpyEncoder).encode()
    except (TypeError, ValueError) as exc:
        logger.error("model output is not JSON-serialisable: %s", exc)
        raise RequestError(
            500, "INTERNAL_ERROR", client_message(f"The model's output could not be converted to JSON: {exc}")
        ) from exc
