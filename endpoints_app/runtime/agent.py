"""The runtime agent: one per host; reconciles the desired deployments with model-server processes.

Each pass of the loop (every half second):
1. Deployments not built yet are built in a worker thread: the model version is resolved in the
   registry and its files copied into the deployment's folder; every step goes to build.log.
2. Built deployments get replicas started until they have as many as desired. A replica is a
   ``model_server`` process whose stdout/stderr is the served model's log (server.log). It is
   READY when its /health answers; until then it is STARTING.
3. A replica that exits is restarted with backoff. One that never became ready counts as a failed
   start; after MODELFLEET_REPLICA_START_ATTEMPTS failed starts the deployment is
   DEPLOYMENT_FAILED with the error the model server printed (e.g. the load exception).
4. Deployments whose removal was requested are drained: replicas are marked DRAINING (the gateway
   stops picking them), kept alive for the gateway's route-cache lifetime and until their
   in-flight requests finish, then terminated.

Model code is hostile (any editor may register a model), so every replica runs sandboxed
(runtime/sandbox.py): it reads its own model, writes its own scratch folder, binds its own port
and reaches nothing of the control plane. When the agent runs as root, replicas run as ``nobody``
(or, where the Python installation is closed to ``nobody``, as root without any capability).
Each replica gets a credential of its own (runtime/credentials.py) that every request to it must
carry; ``{{secrets/scope/key}}`` values in ``environment_vars`` are resolved here, so the model
gets the value and never the database.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from endpoints_app.errors import DomainError
from endpoints_app.models import Deployment, DeploymentState, Replica, ReplicaState, RuntimeHost, ScalingDecision
from endpoints_app.redis_client import get_redis
from endpoints_app.runtime import sandbox
from endpoints_app.runtime.autoscaler import History, Policy, Sample, decide
from endpoints_app.runtime.build import BuildError, prepare_model
from endpoints_app.runtime.credentials import authorization, new_credential
from endpoints_app.runtime.layout import WAKE_QUEUE, deployment_dir, deployments_root, log_path, read_tail
from endpoints_app.services import secrets
from endpoints_app.validation import environment_secret_reference, forbidden_environment_var

log = logging.getLogger("modelfleet.runtime")

LOOP_SECONDS = 0.5
STARTING_LOOP_SECONDS = 0.1
ROOT = Path(__file__).resolve().parents[2]
SAMPLE_SECONDS = 1.0
HEARTBEAT_SECONDS = 10.0
MAX_DRAIN_SECONDS = 60.0
TERM_GRACE_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 30.0
_CHILD_ENV_ALLOWLIST = {
    "PATH",
    "HOME",
    "LANG",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CUDA_VISIBLE_DEVICES",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
}


# Set in every model server's environment, after the model's own environment_vars.  joblib would
# try (and fail, with a warning) to make a POSIX semaphore in /dev/shm, which the sandbox keeps
# closed (see runtime/sandbox.py on multiprocessing).
_REPLICA_FIXED_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONUNBUFFERED": "1",
    "JOBLIB_MULTIPROCESSING": "0",
}


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    """Children die with the agent (Linux): no orphaned model servers after a crash."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def health(host: str, port: int, credential: str, timeout: float = 0.5) -> dict | None:
    """The replica's /health JSON when it answers 200, else None."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health", headers={"Authorization": authorization(credential)})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return json.loads(body or b"{}")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


@dataclass
class ReplicaProc:
    replica_id: int
    deployment_id: int
    index: int
    port: int
    popen: subprocess.Popen
    credential: str = field(default="", repr=False)
    scratch: Path | None = None  # the replica's writable folder, removed when it stops
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    drain_started: float | None = None
    term_sent: float | None = None
    gpu: str | None = None  # the GPU index this replica is pinned to
    host: str = ""  # where its model server answers, when not on this host (the ray runtime)


@dataclass
class DeploymentRuntime:
    """What the agent remembers about one deployment between passes."""

    failed_starts: int = 0
    restarts: int = 0
    next_start_at: float = 0.0
    next_index: int = 0
    ever_ready: bool = False
    exits: list[float] = field(default_factory=list)  # when ready replicas exited (crash-loop check)
    history: History = field(default_factory=History)
    last_sample: float = 0.0


class Agent:
    def __init__(self, *, agent_id: str) -> None:
        self.agent_id = agent_id
        self.runtime_dir = Path(settings.RUNTIME_DIR)
        self.bind_host = settings.RUNTIME_BIND_HOST
        self.advertise_host = settings.RUNTIME_ADVERTISE_HOST
        self.start_attempts = settings.REPLICA_START_ATTEMPTS
        self.ready_timeout = settings.REPLICA_READY_TIMEOUT_SECONDS
        self.drain_grace = settings.GATEWAY_ROUTE_TTL_SECONDS + 1.0
        self.procs: dict[int, ReplicaProc] = {}
        self.state: dict[int, DeploymentRuntime] = {}
        self.builds: dict[int, Future] = {}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="build")
        self.stopping = threading.Event()
        self.last_heartbeat = 0.0
        self.gpus = detect_gpus()
        self.standby: subprocess.Popen | None = None
        self.standby_slot: Path | None = None  # the folder the standby's sandbox allows (_new_standby_slot)
        self.standby_disabled = False
        self.data_dir = Path(settings.DATA_DIR)
        self.scratch_root = self.runtime_dir / "scratch"
        self.replica_user = self._choose_replica_user()

    # --- the sandbox ------------------------------------------------------------------------------

    def _choose_replica_user(self) -> str:
        """Who replicas run as: "" (this user, not root), "nobody", or "root" (without capabilities).

        Also warns, once, when the kernel offers no Landlock: replicas then run unsandboxed.
        """
        abi = sandbox.landlock_abi()
        if abi == 0:
            log.warning(
                "this kernel offers no Landlock: replicas run UNSANDBOXED (model code can read what this "
                "user can read; seccomp still refuses outbound connections, namespaces and signals to other "
                "processes); use a kernel with Landlock (5.13+, 6.12+ for every feature)"
            )
        else:
            seccomp = platform.machine() in sandbox.SYS_SECCOMP
            expected = sandbox.Isolation(landlock_abi=abi, seccomp=seccomp, signals_own_pid=abi < 6)
            for tag, why in expected.gaps():
                log.warning("replica sandbox: this kernel's Landlock (ABI %d) lacks %s: %s", abi, tag, why)
        if os.geteuid() != 0:
            return ""
        try:
            uid, gid = sandbox.replica_ids()
        except KeyError:
            log.warning("no user %r on this host: replicas run as root without capabilities", sandbox.REPLICA_USER)
            return "root"
        needed = [sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), str(ROOT / "endpoints_app")]
        blocked = sandbox.reachable_by(uid, gid, needed) or sandbox.reachable_by(uid, gid, [str(self.data_dir.parent)])
        if blocked:
            log.warning(
                "replicas run as root without capabilities, not as %s: %s is closed to that user",
                sandbox.REPLICA_USER,
                blocked,
            )
            return "root"
        self._close_data_dir_to_others()
        return sandbox.REPLICA_USER

    def _close_data_dir_to_others(self) -> None:
        close_data_dir_to_others(self.data_dir, self.runtime_dir, self.scratch_root)

    def _sandbox_plan(self, *, model: str, scratch: Path, log_file: Path, gpu: bool = False) -> str:
        """The early sandbox stage of one model server: its own model (read), scratch folder (write)
        and log (write, as a file or the folder its log will be linked into); nothing of another
        deployment, so threads started before the final stage reach no more than the replica."""
        return sandbox.Plan(
            read=[model],
            write=[str(scratch)],
            append=[str(log_file)],
            user=self.replica_user,
            gpu=gpu,
        ).to_env()

    def _new_standby_slot(self) -> Path:
        """The folders a standby may use once it becomes a replica, made before it starts.

        Its Landlock rules must name existing paths, and it does not know yet which deployment it
        will serve: at assignment the agent hard-links that deployment's model into ``model`` and
        its log into ``log`` (a Landlock rule covers what lies beneath its folder, whatever other
        names the files have), and ``scratch`` becomes the replica's scratch folder.
        """
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        slot = self.scratch_root / f"standby-{os.urandom(6).hex()}"
        for name in ("model", "log", "scratch"):
            (slot / name).mkdir(parents=True, mode=0o711 if name != "scratch" else 0o700)
        slot.chmod(0o711)
        if self.replica_user not in ("", "root"):
            uid, gid = sandbox.replica_ids(self.replica_user)
            os.chown(slot / "scratch", uid, gid)
        return slot

    def _prepare_replica_files(self, scratch: Path, server_log: Path) -> None:
        """Create the replica's scratch folder and log; hand them to the replica user."""
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True, mode=0o700)
        server_log.touch()
        if self.replica_user not in ("", "root"):
            uid, gid = sandbox.replica_ids(self.replica_user)
            os.chown(scratch, uid, gid)
            os.chown(server_log, uid, gid)

    def _release(self, proc: ReplicaProc) -> None:
        """The replica's process is gone: forget it and delete its scratch folder."""
        self.procs.pop(proc.replica_id, None)
        if proc.scratch is not None:
            shutil.rmtree(proc.scratch, ignore_errors=True)

    # --- lifecycle --------------------------------------------------------------------------------

    def forget_previous_run(self) -> None:
        """Replica rows left by an earlier run of this agent describe processes that are gone."""
        stale = Replica.objects.filter(agent_id=self.agent_id).exclude(state=ReplicaState.STOPPED)
        for pid in stale.values_list("pid", flat=True):
            if pid is None:  # never started
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        stale.update(state=ReplicaState.STOPPED, stopped_at=timezone.now(), message="runtime agent restarted")

    def run_forever(self) -> None:
        self.forget_previous_run()
        self._spawn_standby()
        log.info(
            "runtime agent %s started (replicas on %s, advertised as %s)",
            self.agent_id,
            self.bind_host,
            self.advertise_host,
        )
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                if started - self.last_heartbeat >= HEARTBEAT_SECONDS:
                    self.heartbeat()
                self.reconcile()
            except Exception:  # one bad pass must not kill the agent; the next pass retries
                log.exception("reconcile pass failed")
            # While a replica is starting, look again soon: readiness is noticed within 0.1 s.
            pace = STARTING_LOOP_SECONDS if any(not p.ready for p in self.procs.values()) else LOOP_SECONDS
            self.wait_for_wake(max(0.02, pace - (time.monotonic() - started)))
        self.shutdown()

    def wait_for_wake(self, seconds: float) -> None:
        """Sleep until the next pass, or until the gateway asks to wake a scaled-to-zero deployment."""
        try:
            if get_redis().blpop([WAKE_QUEUE], timeout=seconds) is not None:
                get_redis().delete(WAKE_QUEUE)  # one pass serves every pending wake-up
            return
        except Exception:  # no Redis: plain sleep
            self.stopping.wait(seconds)

    def heartbeat(self) -> None:
        """Tell the control plane what this host can hold (capacity checks read it)."""
        self.last_heartbeat = time.monotonic()
        RuntimeHost.objects.update_or_create(
            agent_id=self.agent_id,
            defaults={
                "memory_mb": host_memory_mb(),
                "cpus": os.cpu_count() or 1,
                "gpus": self.gpus,
                "heartbeat_at": timezone.now(),
            },
        )

    def shutdown(self) -> None:
        log.info("runtime agent stopping %d replica(s)", len(self.procs))
        self._discard_standby()
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                proc.popen.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
        Replica.objects.filter(id__in=list(self.procs)).update(
            state=ReplicaState.STOPPED, stopped_at=timezone.now(), message="runtime agent stopped"
        )
        for proc in list(self.procs.values()):
            self._release(proc)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- the loop ---------------------------------------------------------------------------------

    def reconcile(self) -> None:
        close_old_connections()
        live_ids = set()
        for deployment in Deployment.objects.filter(stopped_at__isnull=True).order_by("id"):
            live_ids.add(deployment.id)
            if deployment.remove_requested_at is not None:
                self._drain(deployment)
            else:
                self._ensure(deployment)
        # A deployment row deleted outright: stop whatever still runs for it.
        for proc in list(self.procs.values()):
            if proc.deployment_id not in live_ids:
                self._terminate(proc, force=True)
                if proc.popen.poll() is not None:
                    self._release(proc)

    def _procs_of(self, deployment_id: int) -> list[ReplicaProc]:
        return [p for p in self.procs.values() if p.deployment_id == deployment_id]

    def _ensure(self, deployment: Deployment) -> None:
        if deployment.state in (DeploymentState.FAILED, DeploymentState.ABORTED):
            return
        if deployment.built_at is None:
            self._build_async(deployment)
            return
        rt = self.state.setdefault(deployment.id, DeploymentRuntime())
        now = time.monotonic()
        if is_gpu_workload(deployment.spec.get("workload_type") or "CPU") and not self.gpus:
            self._fail(
                deployment,
                f"workload_type {deployment.spec.get('workload_type')} needs a GPU, but this runtime host has none "
                "(nvidia-smi found no GPU). Use workload_type CPU, or run a runtime agent on a GPU host.",
            )
            return
        for proc in self._procs_of(deployment.id):
            if proc.drain_started is not None:
                self._drain_proc(proc, now)
            else:
                self._check_replica(deployment, rt, proc, now)
        if deployment.state == DeploymentState.FAILED:
            return
        waking = deployment.desired_replicas == 0 and deployment.wake_requested_at is not None
        if waking or now - rt.last_sample >= SAMPLE_SECONDS:
            rt.last_sample = now
            self._autoscale(deployment, rt, now)
        active = [p for p in self._procs_of(deployment.id) if p.drain_started is None]
        if len(active) < deployment.desired_replicas and now >= rt.next_start_at:
            self._start_replica(deployment, rt)
        elif len(active) > deployment.desired_replicas:
            # Scale down: drain the newest replica (not-yet-ready ones first).
            victim = max(active, key=lambda p: (not p.ready, p.index))
            self._begin_drain(victim)
        self._update_deployment_state(deployment, rt)

    def _autoscale(self, deployment: Deployment, rt: DeploymentRuntime, now: float) -> None:
        ready = [p for p in self._procs_of(deployment.id) if p.ready and p.drain_started is None]
        answers = [health(self.address_of(p), p.port, p.credential, timeout=0.3) for p in ready]
        stats = [h for h in answers if h is not None]
        rt.history.add(
            Sample(
                at=now,
                ready=len(stats),
                in_flight=float(sum(h.get("in_flight", 0) for h in stats)),
                idle_seconds=min((float(h.get("idle_seconds", 0.0)) for h in stats), default=0.0),
            )
        )
        policy = Policy(
            min_replicas=deployment.min_replicas,
            max_replicas=max(deployment.max_replicas, 1),
            scale_to_zero=deployment.scale_to_zero_enabled,
            target_in_flight=settings.AUTOSCALE_TARGET_IN_FLIGHT,
            up_delay=settings.AUTOSCALE_UP_DELAY_SECONDS,
            down_delay=settings.AUTOSCALE_DOWN_DELAY_SECONDS,
            idle_seconds=settings.SCALE_TO_ZERO_IDLE_SECONDS,
        )
        wake_pending = deployment.wake_requested_at is not None and (
            deployment.scaled_to_zero_at is None or deployment.wake_requested_at >= deployment.scaled_to_zero_at
        )
        decision = decide(
            desired=deployment.desired_replicas, policy=policy, history=rt.history, now=now, wake_pending=wake_pending
        )
        if decision is None:
            return
        target, reason = decision
        updates: dict = {"desired_replicas": target}
        if target == 0:
            updates["scaled_to_zero_at"] = timezone.now()
        elif deployment.desired_replicas == 0:
            updates.update(scaled_to_zero_at=None, wake_requested_at=None)
        Deployment.objects.filter(id=deployment.id).update(**updates)
        ScalingDecision.objects.create(
            deployment_id=deployment.id,
            at=timezone.now(),
            from_replicas=deployment.desired_replicas,
            to_replicas=target,
            reason=reason,
        )
        self._server_log_note(deployment.id, f"autoscaler: {deployment.desired_replicas} → {target} replicas: {reason}")
        log.info("autoscaler: %s %d → %d replicas: %s", deployment, deployment.desired_replicas, target, reason)
        for key, value in updates.items():
            setattr(deployment, key, value)
        rt.history = History()

    def _check_replica(self, deployment: Deployment, rt: DeploymentRuntime, proc: ReplicaProc, now: float) -> None:
        code = proc.popen.poll()
        if code is not None:
            self._release(proc)
            reason = _exit_reason(self._server_log(deployment.id), code)
            Replica.objects.filter(id=proc.replica_id).update(
                state=ReplicaState.FAILED, stopped_at=timezone.now(), exit_code=code, message=reason
            )
            if proc.ready:
                rt.restarts += 1
                log.warning("replica %s of %s exited (%s); restarting", proc.index, deployment, reason)
                window = settings.CRASH_LOOP_WINDOW_SECONDS
                rt.exits = [t for t in rt.exits if now - t < window] + [now]
                if len(rt.exits) >= settings.CRASH_LOOP_RESTARTS:
                    self._fail(
                        deployment,
                        f"The model server is crash-looping: replicas exited {len(rt.exits)} times in "
                        f"{window:.0f} s. Last error: {reason}",
                    )
                    return
            else:
                rt.failed_starts += 1
                log.warning(
                    "replica %s of %s failed to start (%s), attempt %d/%d",
                    proc.index,
                    deployment,
                    reason,
                    rt.failed_starts,
                    self.start_attempts,
                )
                if rt.failed_starts >= self.start_attempts and not rt.ever_ready:
                    self._fail(
                        deployment, f"The model server failed to start {rt.failed_starts} times. Last error: {reason}"
                    )
                    return
            backoff = min(MAX_BACKOFF_SECONDS, 2 ** max(0, rt.failed_starts + rt.restarts - 1))
            rt.next_start_at = now + backoff
            return
        if not proc.ready:
            status = health(self.address_of(proc), proc.port, proc.credential)
            if status is not None:
                proc.ready = True
                rt.ever_ready = True
                rt.failed_starts = 0
                Replica.objects.filter(id=proc.replica_id).update(
                    state=ReplicaState.READY, ready_at=timezone.now(), isolation=str(status.get("isolation", ""))[:128]
                )
                log.info(
                    "replica %s of %s is ready on port %s (%.1fs)",
                    proc.index,
                    deployment,
                    proc.port,
                    now - proc.started,
                )
            elif now - proc.started > self.ready_timeout:
                log.warning(
                    "replica %s of %s not ready after %.0fs; killing it", proc.index, deployment, self.ready_timeout
                )
                self._server_log_note(
                    deployment.id, f"replica {proc.index} did not become ready within {self.ready_timeout:.0f}s; killed"
                )
                proc.popen.kill()

    # --- warm standby ---------------------------------------------------------------------------

    def _spawn_standby(self) -> None:
        """A model server that has done its slow imports and waits to be told what to serve.

        Handing a wake-up or scale-up to it skips ~2 s of Python imports (cold starts under 3 s).
        """
        if not settings.RUNTIME_STANDBY or self.standby_disabled:
            return
        if self.standby is not None:
            code = self.standby.poll()
            if code is None:
                return
            if code != 0:
                # A standby that dies on its own would be respawned forever: do without one.
                self.standby_disabled = True
                log.warning("the standby model server exited with code %s; starting replicas fresh from now on", code)
                self._discard_standby()
                return
        if self.standby_slot is not None:  # of a standby that is gone
            shutil.rmtree(self.standby_slot, ignore_errors=True)
            self.standby_slot = None
        env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV_ALLOWLIST or k.startswith("LC_")}
        env.update(_REPLICA_FIXED_ENV)
        env["CUDA_VISIBLE_DEVICES"] = ""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        slot = self._new_standby_slot()
        self.standby_slot = slot
        env[sandbox.PLAN_ENV] = self._sandbox_plan(
            model=str(slot / "model"), scratch=slot / "scratch", log_file=slot / "log"
        )
        with open(self.runtime_dir / "standby.log", "ab") as out:
            self.standby = subprocess.Popen(
                [sys.executable, "-m", "endpoints_app.runtime.model_server", "--standby"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(ROOT),
                preexec_fn=_set_pdeathsig,
            )

    def _take_standby(
        self, assignment: dict, *, model_path: str, server_log: Path
    ) -> tuple[subprocess.Popen, Path] | None:
        """Give the standby process this replica's work: its process and its slot (the replica's
        folder, removed when it stops), or None when there is no usable standby."""
        standby, slot = self.standby, self.standby_slot
        if standby is None or slot is None or standby.poll() is not None or standby.stdin is None:
            self._spawn_standby()  # judges how a dead standby ended, and removes its slot
            return None
        # A standby still importing is used too: it finishes its imports, then loads the model,
        # which is never slower than a fresh process doing both.
        self.standby, self.standby_slot = None, None
        try:
            assignment = {**assignment, **fill_standby_slot(slot, Path(model_path), server_log)}
            standby.stdin.write((json.dumps(assignment) + "\n").encode())
            standby.stdin.close()
        except OSError as exc:
            log.warning("could not hand a replica to the standby (%s); starting it fresh", exc)
            standby.kill()
            shutil.rmtree(slot, ignore_errors=True)
            self._spawn_standby()
            return None
        self._spawn_standby()
        return standby, slot

    def _discard_standby(self) -> None:
        """Stop the standby (if any) and remove its slot."""
        if self.standby is not None and self.standby.poll() is None:
            self.standby.kill()
        if self.standby_slot is not None:
            shutil.rmtree(self.standby_slot, ignore_errors=True)
        self.standby, self.standby_slot = None, None

    def bind_host_for_checks(self) -> str:
        return "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host

    def address_of(self, proc: ReplicaProc) -> str:
        """Where the agent's health checks reach a replica."""
        return proc.host or self.bind_host_for_checks()

    def _start_replica(self, deployment: Deployment, rt: DeploymentRuntime) -> None:
        try:
            model_env = replica_environment(deployment.spec.get("environment_vars") or {})
        except ValueError as exc:
            self._fail(deployment, str(exc))
            return
        index = rt.next_index
        rt.next_index += 1
        port = free_port(self.bind_host_for_checks())
        credential = new_credential()
        # The model is user code: it gets a minimal environment plus its own environment_vars,
        # never the control plane's database URL or secret key.
        env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV_ALLOWLIST or k.startswith("LC_")}
        env.update(model_env)
        env.update(_REPLICA_FIXED_ENV)
        gpu = None
        if is_gpu_workload(deployment.spec.get("workload_type") or "CPU"):
            gpu = self._free_gpu()
            if gpu is None:
                self._fail(
                    deployment, f"All {len(self.gpus)} GPU(s) of this runtime host are in use by other replicas."
                )
                return
            env["CUDA_VISIBLE_DEVICES"] = gpu
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""  # CPU workloads never grab a GPU
        directory = deployment_dir(deployment.id)
        directory.mkdir(parents=True, exist_ok=True)
        server_log = log_path(deployment.id, "server")
        server_log.touch()
        if self.replica_user not in ("", "root"):
            uid, gid = sandbox.replica_ids(self.replica_user)
            os.chown(server_log, uid, gid)
        popen = None
        scratch = self.scratch_root / f"{deployment.id}-{index}"
        if gpu is None:
            taken = self._take_standby(
                {
                    "host": self.bind_host,
                    "port": port,
                    "name": deployment.served_entity_name,
                    "replica_id": index,
                    "credential": credential,
                    "env": model_env,
                },
                model_path=deployment.model_path,
                server_log=server_log,
            )
            if taken is not None:
                popen, scratch = taken  # the standby's slot: removed with the replica
        if popen is None:
            self._prepare_replica_files(scratch, server_log)
            cmd = [
                sys.executable,
                "-m",
                "endpoints_app.runtime.model_server",
                "--model-path",
                deployment.model_path,
                "--host",
                self.bind_host,
                "--port",
                str(port),
                "--name",
                deployment.served_entity_name,
                "--replica-id",
                str(index),
                "--scratch-dir",
                str(scratch),
            ]
            # The credential travels in the environment (never argv, which any local user can read);
            # the model server removes it from its environment before loading the model.
            env["MODELFLEET_REPLICA_CREDENTIAL"] = credential
            env[sandbox.PLAN_ENV] = self._sandbox_plan(
                model=deployment.model_path, scratch=scratch, log_file=server_log, gpu=gpu is not None
            )
            with open(server_log, "ab") as out:
                popen = subprocess.Popen(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=str(ROOT),
                    preexec_fn=_set_pdeathsig,
                )
        replica = Replica.objects.create(
            deployment=deployment,
            agent_id=self.agent_id,
            index=index,
            host=self.advertise_host,
            port=port,
            pid=popen.pid,
            credential=credential,
        )
        self.procs[replica.id] = ReplicaProc(
            replica.id, deployment.id, index, port, popen, credential=credential, scratch=scratch, gpu=gpu
        )
        log.info("started replica %s of %s (pid %s, port %s)", index, deployment, popen.pid, port)

    def _update_deployment_state(self, deployment: Deployment, rt: DeploymentRuntime) -> None:
        ready = sum(1 for p in self._procs_of(deployment.id) if p.ready and p.drain_started is None)
        if deployment.desired_replicas == 0:
            state, message = DeploymentState.READY, "Scaled to zero; the next query starts a replica."
        elif ready >= deployment.desired_replicas:
            state, message = DeploymentState.READY, f"{ready} replica(s) ready."
        elif rt.ever_ready:
            state, message = (
                DeploymentState.RECOVERING,
                f"{ready} of {deployment.desired_replicas} replica(s) ready; restarting the others.",
            )
        else:
            state, message = DeploymentState.CREATING, "Starting the model server."
        if (state, message) != (deployment.state, deployment.state_message):
            Deployment.objects.filter(id=deployment.id, stopped_at__isnull=True).exclude(
                state=DeploymentState.FAILED
            ).update(state=state, state_message=message)

    def _fail(self, deployment: Deployment, message: str) -> None:
        log.error("deployment %s failed: %s", deployment, message)
        Deployment.objects.filter(id=deployment.id).update(state=DeploymentState.FAILED, state_message=message)
        deployment.state = DeploymentState.FAILED
        for proc in self._procs_of(deployment.id):
            self._terminate(proc, force=True)

    # --- build ------------------------------------------------------------------------------------

    def _build_async(self, deployment: Deployment) -> None:
        future = self.builds.get(deployment.id)
        if future is None:
            self.builds[deployment.id] = self.pool.submit(self._build, deployment.id)
        elif future.done():
            self.builds.pop(deployment.id, None)

    def _build(self, deployment_id: int) -> None:
        close_old_connections()
        try:
            deployment = Deployment.objects.get(id=deployment_id)
            directory = deployment_dir(deployment_id)
            directory.mkdir(parents=True, exist_ok=True)
            with open(log_path(deployment_id, "build"), "a", encoding="utf-8") as build_log:
                try:
                    model_path = prepare_model(deployment, directory / "model", build_log)
                except BuildError as exc:
                    Deployment.objects.filter(id=deployment_id).update(
                        state=DeploymentState.FAILED, state_message=str(exc)
                    )
                    return
            Deployment.objects.filter(id=deployment_id).update(
                model_path=str(model_path), built_at=timezone.now(), state_message="Starting the model server."
            )
        except Exception as exc:  # recorded on the deployment; the agent keeps running
            log.exception("build of deployment %s failed", deployment_id)
            Deployment.objects.filter(id=deployment_id).update(
                state=DeploymentState.FAILED, state_message=f"Build failed: {type(exc).__name__}: {exc}"
            )
        finally:
            close_old_connections()

    # --- removal ----------------------------------------------------------------------------------

    def _drain(self, deployment: Deployment) -> None:
        build = self.builds.get(deployment.id)
        if build is not None and not build.done():
            return  # let the build finish; its replicas are never started
        now = time.monotonic()
        for proc in self._procs_of(deployment.id):
            if proc.drain_started is None:
                self._begin_drain(proc)
            else:
                self._drain_proc(proc, now)
        if not self._procs_of(deployment.id):
            if deployment.state == DeploymentState.FAILED:
                final = DeploymentState.FAILED
            elif deployment.state == DeploymentState.CREATING:
                final = DeploymentState.ABORTED
            else:
                final = DeploymentState.STOPPED
            message = (
                deployment.state_message
                if final == DeploymentState.FAILED
                else (
                    "Removed before it became ready."
                    if final == DeploymentState.ABORTED
                    else "Stopped: no config serves it any more."
                )
            )
            Deployment.objects.filter(id=deployment.id).update(
                state=final, state_message=message, stopped_at=timezone.now()
            )
            self.state.pop(deployment.id, None)
            self.builds.pop(deployment.id, None)
            log.info("deployment %s removed", deployment)

    def _begin_drain(self, proc: ReplicaProc) -> None:
        """Stop routing to the replica; it is stopped once the gateway's routes and requests let go."""
        proc.drain_started = time.monotonic()
        Replica.objects.filter(id=proc.replica_id).update(state=ReplicaState.DRAINING)

    def _drain_proc(self, proc: ReplicaProc, now: float) -> None:
        assert proc.drain_started is not None
        if proc.popen.poll() is not None:
            self._release(proc)
            Replica.objects.filter(id=proc.replica_id).update(state=ReplicaState.STOPPED, stopped_at=timezone.now())
            return
        if proc.term_sent is None and now - proc.drain_started >= self.drain_grace:
            status = health(self.address_of(proc), proc.port, proc.credential) if proc.ready else None
            idle = status is None or not status.get("in_flight")
            if idle or now - proc.drain_started > MAX_DRAIN_SECONDS:
                self._terminate(proc)
        elif proc.term_sent is not None and now - proc.term_sent > TERM_GRACE_SECONDS:
            proc.popen.kill()

    def _free_gpu(self) -> str | None:
        used = {p.gpu for p in self.procs.values() if p.gpu is not None}
        return next((g["index"] for g in self.gpus if g["index"] not in used), None)

    def _terminate(self, proc: ReplicaProc, *, force: bool = False) -> None:
        if proc.popen.poll() is not None:
            return
        if proc.term_sent is None:
            proc.popen.terminate()
            proc.term_sent = time.monotonic()
        elif force and time.monotonic() - proc.term_sent > TERM_GRACE_SECONDS:
            proc.popen.kill()

    # --- logs -------------------------------------------------------------------------------------

    def _server_log(self, deployment_id: int) -> str:
        return read_tail(log_path(deployment_id, "server"), 16_000)

    def _server_log_note(self, deployment_id: int, line: str) -> None:
        with open(log_path(deployment_id, "server"), "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} runtime: {line}\n")


def fill_standby_slot(slot: Path, model_path: Path, server_log: Path) -> dict[str, str]:
    """Link a deployment's model and log into a standby's slot (see Agent._new_standby_slot); the
    assignment's paths, which are the only ones the standby's sandbox lets it use."""
    _link_tree(model_path, slot / "model")
    os.link(server_log, slot / "log" / server_log.name)
    return {
        "model_path": str(slot / "model"),
        "log_path": str(slot / "log" / server_log.name),
        "scratch_dir": str(slot / "scratch"),
    }


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link the files of ``source`` into the existing folder ``target`` (copies across filesystems)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


def close_data_dir_to_others(data_dir: Path, runtime_dir: Path, scratch_root: Path) -> None:
    """Replicas running as another user may pass through DATA_DIR to the runtime folder, nothing else.

    DATA_DIR and the runtime folders become 0711 (enter, not list); every other entry of DATA_DIR
    (keys, database, admin files, the Redis socket, the model store) and of the runtime folder
    (the standby's log) loses its group and other permissions.
    """
    deployments = deployments_root(runtime_dir)
    for directory in (data_dir, runtime_dir, deployments, scratch_root):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o711)
    for parent, keep in ((data_dir, {runtime_dir}), (runtime_dir, {deployments, scratch_root})):
        for entry in parent.iterdir():
            if entry not in keep and not entry.is_symlink():
                entry.chmod(entry.stat().st_mode & 0o7700)


def replica_environment(environment_vars: dict) -> dict[str, str]:
    """A served entity's ``environment_vars`` with ``{{secrets/scope/key}}`` values resolved.

    The agent (control plane) resolves them, so the model gets the value and never needs the
    secrets store. Who may reference which secret was checked when the config was accepted.
    Raises ValueError naming the reference (never a value) when one cannot be read.
    """
    resolved: dict[str, str] = {}
    for name, value in environment_vars.items():
        # A config saved before the rules existed may still carry LD_PRELOAD or PYTHONPATH, which
        # the loader or the interpreter would act on before the sandbox is in place.
        reason = forbidden_environment_var(str(name))
        if reason is not None:
            raise ValueError(f"environment variable {name} may not be set: {reason}")
        # The same reading as validation's (which allows spaces around a reference).
        parsed = environment_secret_reference(value) if isinstance(value, str) else None
        if parsed is None:
            resolved[str(name)] = str(value)
            continue
        try:
            resolved[str(name)] = secrets.resolve(scope=parsed[0], key=parsed[1])
        except DomainError as exc:
            raise ValueError(f"environment variable {name}: cannot read {value}: {exc.message}") from None
    return resolved


def is_gpu_workload(workload_type: str) -> bool:
    return workload_type.startswith(("GPU_", "MULTIGPU_"))


def host_memory_mb() -> int:
    """Total memory of this host, from /proc/meminfo (Linux)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 4096


def detect_gpus() -> list[dict]:
    """The host's NVIDIA GPUs as [{"index", "name", "memory_mb"}]; none without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for row in out.strip().splitlines():
        parts = [p.strip() for p in row.split(",")]
        if len(parts) >= 3:
            gpus.append({"index": parts[0], "name": parts[1], "memory_mb": int(float(parts[2]))})
    return gpus


def _exit_reason(log_tail: str, code: int) -> str:
    """The most useful line of a dead model server's output."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if "model load failed:" in line:
            return line[line.index("model load failed:") :]
    for line in reversed(lines):
        if line.startswith(("Traceback", "  File")):
            continue
        if "Error" in line or "Exception" in line:
            return f"{line[:500]} (exit code {code})"
    return f"exit code {code}"


def run(args: argparse.Namespace | None = None, *, agent_class: type[Agent] = Agent) -> int:
    """``modelfleet runtime``: run the agent for this host until SIGTERM/SIGINT (the process main,
    runtime/agent_main.py, has set Django up)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent_id = getattr(args, "agent_id", None) or os.environ.get("MODELFLEET_RUNTIME_AGENT_ID") or socket.gethostname()
    agent = agent_class(agent_id=agent_id)

    def _stop(signum: int, frame: object) -> None:
        agent.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if getattr(args, "once", False):
        agent.forget_previous_run()
        agent.reconcile()
        return 0
    agent.run_forever()
    return 0
