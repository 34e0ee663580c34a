"""The full MLflow path: one loaded pyfunc model answering request bodies the way
``mlflow models serve`` does.

The MLflow / Databricks scoring protocol (``dataframe_split``, ``dataframe_records``,
``instances``, ``inputs``, optional ``params``; ``text/csv`` too) is parsed by MLflow's own
scoring-server helpers, so answers and schema errors match ``mlflow models serve``.  Everything
here runs in a worker thread (app.py), except ServedModel.read_fast, which only decodes a small
body and hands it to the fast path (fastpath.py).
"""

from __future__ import annotations

import inspect
import json
import logging
from io import StringIO
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from mlflow.pyfunc.scoring_server import SUPPORTED_FORMATS, _parse_json_data, parse_csv_input
from mlflow.pyfunc.utils.serving_data_parser import is_unified_llm_input

from endpoints_app.runtime.model_server.fastpath import FastInput, SklearnFastPath
from endpoints_app.runtime.model_server.responses import RequestError, client_message, predictions_json

logger = logging.getLogger(__name__)

# ServedModel.read_fast's payload for a body that is not JSON (None is JSON's null).
NOT_JSON = object()
INPUT_KEYS_HELP = (
    "The request body must be a JSON object with exactly one of the keys "
    "'dataframe_split', 'dataframe_records', 'instances' or 'inputs', and optionally 'params'."
)


class ServedModel:
    """A loaded pyfunc model plus what can be worked out once instead of on every request."""

    def __init__(self, model: PyFuncModel) -> None:
        self.model = model
        self.metadata = model.metadata
        self.input_schema = model.metadata.get_input_schema()
        self.has_params_schema = model.metadata.get_params_schema() is not None
        self.accepts_params = "params" in inspect.signature(model.predict).parameters
        self._warned_params_ignored = False
        try:
            self.fast, self.fast_note = SklearnFastPath.for_model(model)
        except Exception as exc:  # an unusual estimator: serve it, just not faster
            self.fast, self.fast_note = None, f"{type(exc).__name__}: {exc}"

    def read_fast(self, body: bytes) -> tuple[Any, FastInput | None]:
        """Decode a JSON body for the fast path: (payload, its rows), or (payload, None) when
        the full path must answer; the payload is NOT_JSON when the body does not decode."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the decoder's recursion limit
            return NOT_JSON, None  # predict_json reports it
        if self.fast is None or type(payload) is not dict:
            return payload, None
        return payload, self.fast.read(payload)

    def predict_json(self, body: bytes) -> bytes:
        """Answer one JSON request body; runs in a worker thread.

        Raises:
            RequestError: the body is not JSON (MALFORMED_REQUEST) or does not fit the
                protocol, the schema or the model (INVALID_PARAMETER_VALUE).
        """
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise RequestError(400, "MALFORMED_REQUEST", f"The request body is not valid JSON: {exc}") from exc
        except RecursionError:  # e.g. 100 000 "[": the decoder recurses once per level
            raise RequestError(400, "MALFORMED_REQUEST", "The request body's JSON is nested too deeply") from None
        return self.predict_payload(payload)

    def predict_payload(self, payload: Any) -> bytes:
        """Answer one decoded JSON request body through MLflow's parsing and the pyfunc model."""
        if not isinstance(payload, dict):
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", f"{INPUT_KEYS_HELP} Got a JSON {type(payload).__name__}."
            )
        if not is_unified_llm_input(payload) and sum(key in SUPPORTED_FORMATS for key in payload) != 1:
            # MLflow's own message lists only the recognised keys (so "[]" for {"foo": 1}) and
            # appends a long note about MLflow 1.x; say what was actually sent instead.  Other
            # keys beside one input key stay allowed (and ignored), as in MLflow.
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", client_message(f"{INPUT_KEYS_HELP} Got keys: {list(payload)}.")
            )
        try:
            # Given a dict, MLflow's parser skips its own json.loads: the body is decoded once.
            parsed = _parse_json_data(payload, self.metadata, self.input_schema)
        except MlflowException as exc:
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        except Exception as exc:
            raise RequestError(
                400, "INVALID_PARAMETER_VALUE", client_message(f"Could not read the model input: {exc}")
            ) from exc
        params = parsed.params
        if params and not self.has_params_schema:
            # MLflow would ignore them too, but with a warning on every request; warn once.
            if not self._warned_params_ignored:
                self._warned_params_ignored = True
                logger.warning("ignoring request params: the model's signature defines no params schema")
            params = None
        predictions = self._predict(parsed.data, params)
        if parsed.is_unified_llm_input:
            # Chat/completions/embeddings bodies get the model output unwrapped, as MLflow does.
            return predictions_json(predictions, wrap=False)
        return predictions_json(predictions, wrap=True)

    def predict_csv(self, body: bytes) -> bytes:
        """Answer one ``text/csv`` request body (a DataFrame with a header row)."""
        try:
            frame = parse_csv_input(StringIO(body.decode("utf-8")), schema=self.input_schema)
        except UnicodeDecodeError as exc:
            raise RequestError(400, "MALFORMED_REQUEST", f"The request body is not valid UTF-8: {exc}") from exc
        except MlflowException as exc:
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        return predictions_json(self._predict(frame, None), wrap=True)

    def _predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        try:
            if self.accepts_params:
                return self.model.predict(data, params=params)
            return self.model.predict(data)
        except MlflowException as exc:
            # Schema enforcement and params validation: the caller's input does not fit.
            raise RequestError(400, "INVALID_PARAMETER_VALUE", client_message(exc.message)) from exc
        except Exception as exc:
            # The model's own code raised.  Mostly that means input it cannot handle, which is
            # how `mlflow models serve` treats it too (a 400), but keep the traceback in the
            # replica's log for whoever has to debug the model.
            logger.warning("predict raised %s: %s", type(exc).__name__, exc, exc_info=True)
            raise RequestError(
                400,
                "INVALID_PARAMETER_VALUE",
                client_message(f"The model could not make a prediction for this input: {type(exc).__name__}: {exc}"),
            ) from exc
