"""The process entry point: arguments (or a standby's assignment), logging, the replica's
credential, the sandbox's final stage, then the server until a stop signal.

The runtime agent starts a replica as::

    python -m endpoints_app.runtime.model_server --model-path PATH --host 127.0.0.1 --port N \
        [--name SERVED_ENTITY_NAME] [--replica-id K] [--threads T] [--max-batch-rows R] [--scratch-dir D]

and redirects its stdout/stderr to the replica's log file, so everything worth knowing about
the replica (start-up, load time, failures, shutdown) is logged to stderr.  ``__main__.py`` runs
first and confines the process before this module's imports start any thread; ``run`` is what it
calls.  Exit codes are listed in the package docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from endpoints_app.runtime import sandbox
from endpoints_app.runtime.model_server import standby
from endpoints_app.runtime.model_server.batching import DEFAULT_MAX_BATCH_ROWS
from endpoints_app.runtime.model_server.server import EXIT_LISTEN_FAILED, loop_factory, serve
from endpoints_app.runtime.model_server.workers import WorkerGroup, planned_workers

logger = logging.getLogger(__name__)

# Where a fresh replica finds its credential; removed from the environment once read.
CREDENTIAL_ENV = "MODELFLEET_REPLICA_CREDENTIAL"


def _configure_logging(name: str, replica_id: int, worker: int = 0) -> None:
    """One format for our lines, uvicorn's and mlflow's, all to stderr (the replica's log); a
    replica's forked workers (workers.py) say which they are."""
    handler = logging.StreamHandler(sys.stderr)
    who = f"{name} replica {replica_id}" + (f" worker {worker}" if worker else "")
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{who}] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # mlflow installs its own stderr handler at import and stops propagation; undo that.
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.handlers.clear()
    mlflow_logger.propagate = True
    logging.captureWarnings(True)


def _ignore_signal(sig: int, frame: FrameType | None) -> None:
    """After a graceful stop uvicorn re-raises the signal it caught, to "trigger the expected
    behaviour"; with the default SIGTERM action that would kill us with -15 instead of exit 0.
    This no-op handler is what uvicorn restores and re-raises into."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m endpoints_app.runtime.model_server",
        description="Load one MLflow pyfunc model and serve /invocations, /health and /metrics.",
    )
    parser.add_argument("--model-path", type=Path, help="local MLflow model directory (required)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="port to listen on (required)")
    parser.add_argument("--name", default=None, help="served entity name (default: the model directory's name)")
    parser.add_argument("--replica-id", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4, help="worker threads that run predict (default 4)")
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=DEFAULT_MAX_BATCH_ROWS,
        help=f"rows that concurrent requests may share one predict call with (default "
        f"{DEFAULT_MAX_BATCH_ROWS}; 1 predicts every request on its own)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes serving this replica (default 0: decided from the model, see workers.py)",
    )
    parser.add_argument(
        "--scratch-dir",
        type=Path,
        default=None,
        help="the replica's own writable folder (TMPDIR and HOME); the only one it may write in a sandbox",
    )
    parser.add_argument(
        "--standby",
        action="store_true",
        help="import everything, then wait for one JSON line on stdin saying what to serve (see STANDBY_KEYS)",
    )
    args = parser.parse_args(argv)
    if args.standby:
        if args.model_path is not None or args.port is not None:
            parser.error("--standby takes the model path and port from stdin, not the command line")
        return args
    if args.model_path is None or args.port is None:
        parser.error("--model-path and --port are required (or --standby)")
    if args.workers < 0:
        parser.error("--workers must be 0 (decided from the model) or more")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.max_batch_rows < 1:
        parser.error("--max-batch-rows must be at least 1")
    if args.name is None:
        args.name = args.model_path.name or "model"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handover: str | None = None
    credential = os.environ.pop(CREDENTIAL_ENV, "")
    if args.standby:
        standby.preload()
        waiting_since = time.monotonic()
        assignment = standby.wait_for_assignment(args)
        if assignment is None:
            return 0
        args, credential = parse_args(assignment.argv), assignment.credential
        handover = (
            f"handed over by a standby process after {time.monotonic() - waiting_since:.1f} s of waiting; "
            f"environment from the assignment: {', '.join(assignment.env_keys) or 'none'}"
        )
    _configure_logging(args.name, args.replica_id)
    if handover:
        logger.info("%s", handover)
    if not credential:
        logger.error(
            "no replica credential: set %s (or the standby assignment's 'credential'); "
            "a model server never answers without one",
            CREDENTIAL_ENV,
        )
        return 2
    group: WorkerGroup | None = None
    workers, why = planned_workers(args.workers, args.model_path.resolve())
    if workers > 1:
        # Forked here: everything imported, no event loop, model or predict thread yet; the port
        # is bound once, before the sandbox's final stage narrows binding to it.
        try:
            group = WorkerGroup.start(args.host, args.port, workers)
        except OSError as exc:
            logger.error("could not listen on %s:%d: %s", args.host, args.port, (exc.strerror or str(exc)).lower())
            return EXIT_LISTEN_FAILED
        if not group.is_parent:
            _configure_logging(args.name, args.replica_id, group.index)
        else:
            logger.info("%d worker processes (%s): pids %s", workers, why, [os.getpid(), *group.children])
    # Each process confines itself (after the fork): its Landlock layer allows its own /proc
    # folder, and the workers are not in one another's domain (no signals between them).
    try:
        isolation = _confine(args)
    except (sandbox.SandboxError, OSError) as exc:
        logger.error("sandbox: could not confine the replica to its model and scratch folder: %s", exc)
        return 5
    signal.signal(signal.SIGTERM, _ignore_signal)
    signal.signal(signal.SIGINT, _ignore_signal)
    # Our own runner, not uvicorn's Server.run(), because the model loader needs the loop; so
    # uvicorn's `loop` setting does not apply and the loop is chosen here.
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(
            serve(
                model_path=args.model_path.resolve(),
                host=args.host,
                port=args.port,
                name=args.name,
                replica_id=args.replica_id,
                threads=args.threads,
                credential=credential,
                max_batch_rows=args.max_batch_rows,
                isolation=isolation,
                group=group,
            )
        )


def _confine(args: argparse.Namespace) -> str:
    """Narrow the sandbox to this replica's model, scratch folder and port; log what is in force."""
    if sandbox.ISOLATION.stages == 0:
        logger.warning("isolation: none (started without the runtime agent's sandbox plan): model code is unconfined")
        return "none"
    if args.scratch_dir is None:
        raise sandbox.SandboxError("a sandboxed replica needs --scratch-dir (its only writable folder)")
    scratch = args.scratch_dir.resolve()
    isolation = sandbox.enter_final(model_path=str(args.model_path.resolve()), scratch=str(scratch), port=args.port)
    if isolation.landlock_abi == 0:
        logger.warning(
            "isolation: %s: this kernel offers no Landlock, so replica FILES ARE NOT CONFINED: model code can "
            "read and write whatever its user can%s",
            isolation.describe(),
            "; seccomp still refuses outbound connections, UDP/raw/unix sockets, namespaces and signals to other "
            "processes"
            if isolation.seccomp
            else ", and connect anywhere",
        )
    else:
        logger.info(
            "isolation: %s (reads its model and the Python installation, writes %s, binds port %d only; "
            "no outbound connections, no UDP/raw/unix sockets, no namespaces, no signals or ptrace outside "
            "its sandbox)",
            isolation.describe(),
            scratch,
            args.port,
        )
    for tag, why in isolation.gaps() if isolation.landlock_abi else []:
        logger.warning("isolation: this kernel's Landlock (ABI %d) lacks %s: %s", isolation.landlock_abi, tag, why)
    return isolation.describe()


def run() -> NoReturn:
    """Serve, then leave at once with main's exit code."""
    try:
        code = main()
    except SystemExit as exc:  # argparse errors, a bad standby assignment
        code = exc.code if isinstance(exc.code, int) else 2
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the loader thread may still be inside mlflow (a stop signal
    # during a long load) or a predict may have outlived the grace period, and joining either
    # would hold the process past the signal.
    os._exit(code)
