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
import json
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


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link the files of ``source`` into the existing folder ``target`` (copies across filesystems)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


class ReplicaHost:
    """The actor (decorated with ``ray.remote`` by the control plane): one model server.

    Created with ``standby=True`` it is a warm spare: it starts a standby model server at once
    (``--standby``: the heavy imports done, waiting for its assignment on stdin) in a slot whose
    folders its sandbox already names; ``start`` then links the model and log into the slot and
    hands the assignment over, so a replacement serves in about a second instead of re-importing.
    """

    def __init__(self, standby: bool = False) -> None:
        self.popen: subprocess.Popen | None = None
        self.folder: Path | None = None
        self.log_file: Path | None = None
        self.lock = threading.Lock()
        self.user = _replica_user()
        self.standby: subprocess.Popen | None = None
        if standby:
            self._spawn_standby()

    def _env(self, model_env: dict, gpus: list) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in CHILD_ENV_ALLOWLIST or k.startswith("LC_")}
        env.update({str(k): str(v) for k, v in model_env.items()})
        env.update(FIXED_ENV)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        return env

    def _spawn_standby(self) -> None:
        base = node_dir()
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o711)
        slot = Path(tempfile.mkdtemp(prefix="standby-", dir=base))
        for name in ("model", "log", "scratch"):
            (slot / name).mkdir(mode=0o711 if name != "scratch" else 0o700)
        slot.chmod(0o711)
        if self.user not in ("", "root"):
            uid, gid = sandbox.replica_ids(self.user)
            os.chown(slot / "scratch", uid, gid)
        env = self._env({}, [])
        env[sandbox.PLAN_ENV] = sandbox.Plan(
            read=[str(slot / "model")], write=[str(slot / "scratch")], append=[str(slot / "log")], user=self.user
        ).to_env()
        with open(slot / "standby.out", "ab") as out:
            self.standby = subprocess.Popen(
                [sys.executable, "-m", "endpoints_app.runtime.model_server", "--standby"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(ROOT),
                preexec_fn=_set_pdeathsig,
            )
        self.folder = slot

    def _start_standby(self, assignment: dict, model_path: Path, host: str, port: int) -> dict | None:
        """Hand the replica to the standby; None when there is no usable one."""
        standby, slot = self.standby, self.folder
        self.standby = None
        if standby is None or slot is None or standby.poll() is not None or standby.stdin is None:
            return None
        _link_tree(model_path, slot / "model")
        log_file = slot / "log" / "server.log"
        log_file.touch()
        if self.user not in ("", "root"):
            uid, gid = sandbox.replica_ids(self.user)
            os.chown(log_file, uid, gid)
        line = {
            "host": host,
            "port": port,
            "name": assignment["name"],
            "replica_id": assignment["index"],
            "credential": assignment["credential"],
            "env": {str(k): str(v) for k, v in (assignment.get("env") or {}).items()},
            "model_path": str(slot / "model"),
            "log_path": str(log_file),
            "scratch_dir": str(slot / "scratch"),
        }
        try:
            standby.stdin.write((json.dumps(line) + "\n").encode())
            standby.stdin.close()
        except OSError:
            standby.kill()
            return None
        self.popen, self.log_file = standby, log_file
        return {"host": host, "port": port, "pid": standby.pid, "user": self.user or "ray's user", "standby": True}

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
        user = self.user
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if not assignment.get("gpus"):
            warm = self._start_standby(assignment, model_path, host, port)
            if warm is not None:
                return warm
        if self.folder is not None:  # a standby that could not be used
            shutil.rmtree(self.folder, ignore_errors=True)
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
        gpus = ray.get_gpu_ids() if assignment.get("gpus") else []
        env = self._env(assignment.get("env") or {}, gpus)
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
        for process in (self.popen, self.standby):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
