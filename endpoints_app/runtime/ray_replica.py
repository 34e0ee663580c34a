"""One replica on a Ray node: the actor that runs Modelfleet's model server there.

The ray runtime (runtime/ray_agent.py, on the control plane) creates one ``ReplicaHost`` actor
per replica, on a node it chose. The actor, in a Ray worker process on that node:

1. gets the deployment's model from Ray's object store (the control plane put it there as a
   tarball, with its SHA-256) unless this node's cache already holds that digest; checks the
   digest, unpacks it (no links, nothing outside the folder) into ``<node dir>/models/<digest>``;
2. starts ``python -m endpoints_app.runtime.model_server`` as a child process listening on the
   node's own address, with the replica's credential in its environment and the local runtime's
   sandbox (runtime/sandbox.py): its model (read), its scratch folder (write), its log (append),
   as ``nobody`` when the node runs Ray as root;
3. answers the control plane's polls: whether the model server still runs, the new bytes of its
   log (the control plane appends them to the deployment's server.log, so logs, polling and
   alerts read them as they read a local replica's), and stop requests.

The control plane reaches the model server directly (``http://<node address>:<port>``); Ray only
places, supervises and carries. No shared disk: nothing here reads the control plane's files.
This module imports nothing of Django (it runs on Ray nodes, which have no database).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

from endpoints_app.runtime import sandbox

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR_ENV = "MODELFLEET_RAY_NODE_DIR"
# What a model server inherits from the Ray worker's environment (as runtime/agent.py's allowlist).
CHILD_ENV_ALLOWLIST = {
    "PATH",
    "HOME",
    "LANG",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
}
FIXED_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONUNBUFFERED": "1",
    "JOBLIB_MULTIPROCESSING": "0",
}
MAX_LOG_CHUNK = 256 * 1024


class ArtifactError(RuntimeError):
    """The model could not be placed on this node (digest mismatch, unsafe archive)."""


def pack_model(model_dir: Path) -> tuple[bytes, str]:
    """A model folder as a gzip tarball and its SHA-256 (the control plane's side)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(model_dir), arcname=".")
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def node_dir() -> Path:
    """This node's own folder for model caches, replica logs and scratch folders."""
    configured = os.environ.get(NODE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"modelfleet-ray-{os.getuid()}"


def unpack_model(data: bytes, digest: str, cache: Path) -> Path:
    """The model of ``digest`` in this node's cache, unpacked from ``data`` when not cached yet."""
    target = cache / digest
    if (target / ".complete").exists():
        return target / "model"
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ArtifactError(f"model archive digest mismatch: expected {digest}, got {actual}")
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o711)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=cache))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                if not (member.isfile() or member.isdir()):
                    raise ArtifactError(f"model archive holds {member.name!r}, which is not a file or folder")
            tar.extractall(staging / "model", filter="data")
        for path in [staging, *staging.rglob("*")]:  # readable by the replica user, never writable
            path.chmod(0o755 if path.is_dir() else 0o644)
        (staging / ".complete").touch()
        try:
            staging.rename(target)
        except OSError:  # another replica on this node unpacked it first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "model"


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def _replica_user() -> str:
    """As the local runtime decides: this user, or ``nobody`` when Ray runs as root and the
    Python installation is open to it, else root without capabilities."""
    if os.geteuid() != 0:
        return ""
    try:
        uid, gid = sandbox.replica_ids()
    except KeyError:
        return "root"
    needed = [sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), str(ROOT / "endpoints_app")]
    return "root" if sandbox.reachable_by(uid, gid, needed) else sandbox.REPLICA_USER


class ReplicaHost:
    """The actor (decorated with ``ray.remote`` by the control plane): one model server."""

    def __init__(self) -> None:
        self.popen: subprocess.Popen | None = None
        self.folder: Path | None = None
        self.log_file: Path | None = None
        self.lock = threading.Lock()

    def node_address(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def start(self, assignment: dict, model: list) -> dict:
        """Start the model server; ``model`` is ``[digest, ObjectRef of the tarball]`` (in a list,
        so Ray fetches the bytes only when this node has not cached them). Returns
        ``{"host", "port", "pid", "user"}``; raises with a readable message when it cannot start."""
        import ray

        digest, ref = model
        base = node_dir()
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o711)
        cache = base / "models"
        if (cache / digest / ".complete").exists():
            model_path = cache / digest / "model"
        else:
            model_path = unpack_model(ray.get(ref), digest, cache)
        host = self.node_address()
        user = _replica_user()
        folder = Path(
            tempfile.mkdtemp(prefix=f"replica-{assignment['deployment_id']}-{assignment['index']}-", dir=base)
        )
        scratch = folder / "scratch"
        scratch.mkdir(mode=0o700)
        log_file = folder / "server.log"
        log_file.touch()
        folder.chmod(0o711)
        if user not in ("", "root"):
            uid, gid = sandbox.replica_ids(user)
            os.chown(scratch, uid, gid)
            os.chown(log_file, uid, gid)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k in CHILD_ENV_ALLOWLIST or k.startswith("LC_")}
        env.update({str(k): str(v) for k, v in (assignment.get("env") or {}).items()})
        env.update(FIXED_ENV)
        gpus = ray.get_gpu_ids() if assignment.get("gpus") else []
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        env["MODELFLEET_REPLICA_CREDENTIAL"] = assignment["credential"]
        env[sandbox.PLAN_ENV] = sandbox.Plan(
            read=[str(model_path)], write=[str(scratch)], append=[str(log_file)], user=user, gpu=bool(gpus)
        ).to_env()
        cmd = [
            sys.executable,
            "-m",
            "endpoints_app.runtime.model_server",
            "--model-path",
            str(model_path),
            "--host",
            host,
            "--port",
            str(port),
            "--name",
            assignment["name"],
            "--replica-id",
            str(assignment["index"]),
            "--scratch-dir",
            str(scratch),
        ]
        with open(log_file, "ab") as out:
            self.popen = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(ROOT),
                preexec_fn=_set_pdeathsig,
            )
        self.folder, self.log_file = folder, log_file
        return {"host": host, "port": port, "pid": self.popen.pid, "user": user or "ray's user"}

    def poll(self, log_offset: int) -> dict:
        """The model server's exit code (None while it runs) and its log's bytes from ``log_offset``."""
        code = self.popen.poll() if self.popen is not None else None
        return {"exit_code": code, **self.read_log(log_offset)}

    def read_log(self, offset: int) -> dict:
        if self.log_file is None:
            return {"data": b"", "offset": offset}
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                data = fh.read(MAX_LOG_CHUNK)
        except OSError:
            return {"data": b"", "offset": offset}
        return {"data": data, "offset": offset + len(data)}

    def stop(self, force: bool = False) -> None:
        if self.popen is not None and self.popen.poll() is None:
            (self.popen.kill if force else self.popen.terminate)()

    def cleanup(self) -> None:
        """The model server is gone: remove its folder (the actor is killed after this)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
