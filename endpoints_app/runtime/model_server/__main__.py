"""``python -m endpoints_app.runtime.model_server``: the first instructions of a replica process.

Their order is the point, so it is spelled out here rather than left to the order of imports:

1. Settings that must hold before MLflow is first imported.
2. The sandbox's early stage (runtime/sandbox.py), before any import starts a thread: numpy
   starts its BLAS pool at import, and Landlock binds only the threads started after it.  The
   runtime agent passes the plan in the environment; run by hand, nothing is confined.
3. Only then the server (main.py), whose imports bring MLflow, numpy, pandas and uvicorn.
"""

from __future__ import annotations

import os
import sys

# Nothing in this process may phone home; these must be set before mlflow is first imported.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
# Same flag `mlflow models serve` sets: some flavours behave differently when serving.
os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = "true"

from endpoints_app.runtime import sandbox  # noqa: E402  (standard library only)

try:
    sandbox.enter_from_environment()
except (sandbox.SandboxError, OSError, KeyError, ValueError) as _exc:
    print(f"sandbox: could not confine the replica: {_exc}", file=sys.stderr, flush=True)
    os._exit(5)

from endpoints_app.runtime.model_server.main import run  # noqa: E402

run()
