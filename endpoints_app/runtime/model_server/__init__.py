"""The model server: one OS process that loads one MLflow pyfunc model and serves it on loopback.

The runtime agent starts one of these per replica (``python -m endpoints_app.runtime.model_server
--model-path PATH --port N ...``, see main.py), or keeps one warm standby (``--standby``, see
standby.py) that imports everything heavy up front and becomes a replica ~30 ms after it is told
which, instead of ~3.5 s.  Routes: ``POST /invocations`` (the MLflow / Databricks scoring
protocol), ``GET /health`` and ``GET /metrics`` (see app.py).

Design choices, each for a reason (each module's docstring says more):

* The HTTP layer is a bare ASGI callable on uvicorn (app.py, server.py): no framework sits
  between the socket and the model, which keeps per-request overhead to parsing, one thread hop
  and the model itself.
* The port opens before the model is loaded (the load runs in a background thread, server.py),
  so the agent can tell "process up, still loading" (503 on /health) from "process dead", and a
  port clash fails in a second rather than after a long load.
* Parsing, prediction and serialisation all run in a worker thread, so a slow or large request
  never stalls /health, /metrics or other connections on the event loop.  Requests are parsed
  by MLflow's own scoring-server helpers (served_model.py), so answers match ``mlflow models
  serve``.
* Except on the scikit-learn fast path (fastpath.py): MLflow's parsing and schema enforcement
  cost ~1.5 ms of a ~2 ms request, so plain-table requests to a scikit-learn model whose
  signature is named scalar columns are checked and converted here, and only when MLflow would
  build exactly the same table; everything else, errors included, still goes through MLflow.
* Concurrent requests to a model that predicts row by row share one predict call (batching.py):
  scikit-learn, XGBoost, LightGBM and CatBoost models, and any model declared row-wise by its
  author (MLmodel metadata) or its served entity (``MODELFLEET_BATCHABLE``), see batchable.py.
  Each request is still parsed and schema-checked on its own, so a bad one fails alone, and a
  lone request never waits for company (served_model.py).
* A custom ``python_model`` runs in one process per CPU, up to two (workers.py): its predict
  is Python holding the GIL, so one process answers on one core at most.  /health and /metrics
  still describe the whole replica.
* SIGTERM/SIGINT trigger uvicorn's graceful shutdown: stop accepting, let in-flight requests
  finish (up to 30 s), then exit 0.

Every route answers only requests that carry the replica's credential (``Authorization: Bearer
<credential>``), which the runtime agent generates per replica and hands over in the environment
(``MODELFLEET_REPLICA_CREDENTIAL``) or in a standby's assignment, never on the command line; the
gateway, the agent and the metrics poller send it.  Without one the server does not start.

Exit codes: 0 after a stop signal (or a standby whose stdin closed), 2 for bad arguments, a
bad standby assignment or no credential, 3 when the model fails to load (the log's first error
line says ``model load failed: <Type>: <message>``), 4 when the port cannot be bound, 5 when the
sandbox the agent asked for could not be set up, 6 when one of a replica's worker processes
was killed (workers.py; a worker that exits with one of these codes gives the replica its code).

Modules, each importing only those listed before it: responses (answer and error bodies),
batchable (which models may batch), compiled (column transforms without pandas), boosted (LightGBM's booster),
frames (input DataFrames built from their blocks), fastpath, served_model (the full MLflow path), batching,
metrics, workers (a replica of several processes), app, server (uvicorn, the background load), standby, main (the entry point);
``__main__`` confines the process before importing main.  This file imports nothing:
``python -m`` runs it before the sandbox's early stage.
"""
