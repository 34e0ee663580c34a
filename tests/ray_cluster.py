"""A Ray cluster of three nodes on this one machine, for the ray backend's tests.

Each node (a head without CPUs for replicas, two workers) runs in its own network namespace with
its own address on a private bridge (10.77.0.0/24; the control plane, in the machine's own
namespace, is 10.77.0.1). The namespaces have no route beyond that subnet, so nothing a node runs
can reach any other address. The nodes run as an unprivileged user (``mfray``) that cannot read
the control plane's data directory. Ray's GCS listens on 6380 (the machine's Redis keeps 6379);
usage stats are off and no dashboard is started.

Needs root (``ip netns``, ``useradd``); ``available()`` says why not when it cannot work.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

USER = "mfray"
BRIDGE = "mfray0"
SUBNET = "10.77.0"
GCS_PORT = 6380
CLIENT_PORT = 10001
RUNTIME_ENV_AGENT_PORT = 6390
NODE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # A node that stops answering is declared dead within ~3 s (Ray's default is ~15-30 s).
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    # Ray starts its workers at nice 15, and the model server an actor starts inherits it: on a busy
    # node it then gets little CPU (measured: a third to a sixth of the local backend's requests/s).
    # A replica is the node's real work, so it runs at the node's own priority.
    "RAY_worker_niceness": "0",
}


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def available() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "the multi-node Ray test needs root (ip netns, veth, useradd)"
    if not shutil.which("ip"):
        return "iproute2's ip is not installed"
    probe = f"mfprobe{os.getpid() % 10000}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"network namespaces are not available here: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install -e '.[ray]')"
    return None


@dataclass
class RayNode:
    name: str
    address: str
    netns: str
    process: subprocess.Popen | None = None
    temp_dir: Path = field(default_factory=Path)

    def pids(self) -> list[int]:
        out = _run("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> None:
        """SIGKILL every process of this node (the raylet, its workers, their model servers)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class RayCluster:
    head: RayNode
    workers: list[RayNode]
    root: Path
    traced: bool = False

    @property
    def client_address(self) -> str:
        return f"ray://{self.head.address}:{CLIENT_PORT}"

    @property
    def nodes(self) -> list[RayNode]:
        return [self.head, *self.workers]

    def outside_connects(self) -> list[str]:
        """The connect() calls of the nodes' processes (traced) to anything but the cluster's own
        addresses (the subnet, loopback), as strace wrote them; Unix and netlink sockets are local."""
        return [line for path in sorted(self.root.glob("*.connects.*")) for line in outside_connects(path.read_text())]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill_all()
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        for node in self.nodes:
            _run("ip", "netns", "del", node.netns, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


_CONNECT = re.compile(
    r"connect\(\d+, \{sa_family=(?P<family>AF_INET6?),.*?"
    r"(?:inet_addr\(\"(?P<v4>[^\"]+)\"\)|inet_pton\(AF_INET6, \"(?P<v6>[^\"]+)\")"
)


def outside_connects(trace: str, subnet: str = f"{SUBNET}.0/24") -> list[str]:
    """The lines of an strace connect() trace whose IPv4/IPv6 destination is outside ``subnet`` and
    loopback (an IPv4-mapped IPv6 address counts as its IPv4 one)."""
    allowed = ipaddress.ip_network(subnet)
    outside = []
    for line in trace.splitlines():
        if "connect(" not in line or "AF_INET" not in line:
            continue
        match = _CONNECT.search(line)
        if match is None:
            outside.append(line)  # an INET connect in a form not understood: shown, not passed
            continue
        address = ipaddress.ip_address(match["v4"] or match["v6"])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback or address in allowed:
            continue
        outside.append(line)
    return outside


def _ensure_user() -> None:
    if _run("id", USER, check=False).returncode != 0:
        _run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER)


def _network(names: list[str]) -> list[RayNode]:
    _run("ip", "link", "del", BRIDGE, check=False)
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    nodes = []
    for i, name in enumerate(names, start=2):
        netns = f"mfray-{name}"
        _run("ip", "netns", "del", netns, check=False)
        _run("ip", "netns", "add", netns)
        host_end, node_end = f"mfv{i}h", f"mfv{i}n"
        _run("ip", "link", "del", host_end, check=False)  # left by an earlier run
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
        _run("ip", "link", "set", node_end, "netns", netns)
        _run("ip", "link", "set", host_end, "master", BRIDGE)
        _run("ip", "link", "set", host_end, "up")
        address = f"{SUBNET}.{i}"
        _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{address}/24", "dev", node_end)
        _run("ip", "netns", "exec", netns, "ip", "link", "set", node_end, "up")
        _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        nodes.append(RayNode(name=name, address=address, netns=netns))
    return nodes


def _start_node(node: RayNode, root: Path, args: list[str], fresh: bool = True, trace_connects: bool = False) -> None:
    node.temp_dir = root / node.name
    node.temp_dir.mkdir(parents=True, exist_ok=not fresh)
    shutil.chown(node.temp_dir, USER, USER)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(node.temp_dir),
        "LANG": "C.UTF-8",
        "MODELFLEET_RAY_NODE_DIR": str(node.temp_dir / "modelfleet"),
        **NODE_ENV,
    }
    # The interpreter may live under a home the node's user cannot enter (pyenv in /root): in the
    # node's own mount namespace that home becomes an empty tmpfs with only the interpreter bound
    # back into it, so the node sees Python and nothing else of that home.
    real = Path(os.path.realpath(sys.executable))
    hidden = next((p for p in reversed(real.parents) if not p.stat().st_mode & 0o001), None)
    setup = ""
    if hidden is not None:
        home_child = real.relative_to(hidden).parts[0]
        stage = root / "python"
        stage.mkdir(exist_ok=True)
        setup = (
            f"mount --bind {hidden / home_child} {stage} && mount -t tmpfs -o mode=755 tmpfs {hidden} && "
            f"mkdir -p {hidden / home_child} && mount --bind {stage} {hidden / home_child} && "
        )
    inner = " ".join(
        [
            "exec runuser -u",
            USER,
            "-- env -i",
            *[f"{k}={v}" for k, v in env.items()],
        ]
    )
    # strace (when asked for, and installed) records every connect() of the node's processes, Ray's
    # own C++ included, for the test that nothing leaves the cluster's addresses.
    trace = (
        [shutil.which("strace") or "strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o",
         str(node.temp_dir.parent / f"{node.name}.connects.{time.monotonic_ns()}")]
        if trace_connects
        else []
    )  # fmt: skip
    cmd = [
        "ip", "netns", "exec", node.netns, *trace,
        "unshare", "-m", "--propagation", "private", "sh", "-c", setup + inner + ' "$@"', "node",
        # `ray start` through Modelfleet's launcher: nothing phones home (its docstring says how).
        sys.executable, "-m", "endpoints_app.runtime.ray_node", "start", "--block",
        "--node-ip-address", node.address,
        "--temp-dir", str(node.temp_dir),
        "--disable-usage-stats",
        "--object-store-memory", str(100 * 2**20),
        *args,
    ]  # fmt: skip
    log = open(node.temp_dir.parent / f"{node.name}.log", "wb")  # noqa: SIM115 - the node's lifetime
    node.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start(
    *, worker_cpus: int = 1, worker_memory_gb: int = 4, timeout: float = 180.0, trace_connects: bool = False
) -> RayCluster:
    """Start the head and two workers; return once both workers have joined. ``trace_connects``:
    record the nodes' connect() calls (``RayCluster.outside_connects``; needs strace)."""
    _ensure_user()
    root = Path(f"/tmp/mfray-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o755)
    shutil.chown(root, USER, USER)
    head, *workers = _network(["head", "w1", "w2"])
    cluster = RayCluster(head=head, workers=workers, root=root, traced=trace_connects)
    try:
        _start_node(
            head,
            root,
            [
                "--head",
                "--port", str(GCS_PORT),
                "--ray-client-server-port", str(CLIENT_PORT),
                "--num-cpus", "0",
                "--include-dashboard", "false",
                # Ray Client's proxy asks this agent for each client's server: a fixed port.
                "--runtime-env-agent-port", str(RUNTIME_ENV_AGENT_PORT),
            ],
            trace_connects=trace_connects,
        )  # fmt: skip
        _wait_for_started(head, timeout)
        # One worker at a time, each retried once: on a busy machine a joining node's first call
        # to the GCS can time out.
        for worker in workers:
            for attempt in range(2):
                _start_node(
                    worker,
                    root,
                    [
                        "--address", f"{head.address}:{GCS_PORT}",
                        "--num-cpus", str(worker_cpus),
                        "--memory", str(worker_memory_gb * 2**30),
                    ],
                    fresh=attempt == 0,
                    trace_connects=trace_connects,
                )  # fmt: skip
                try:
                    _wait_for_started(worker, timeout)
                    break
                except RuntimeError:
                    if attempt:
                        raise
                    worker.kill_all()
        _wait_for_port(head, CLIENT_PORT, timeout)
    except BaseException as exc:
        logs = f"{type(exc).__name__}: {exc}\n" + "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(root.glob("*.log"))
        )
        cluster.stop()
        raise RuntimeError(f"the Ray cluster did not start:\n{logs}") from None
    return cluster


def _wait_for_port(node: RayNode, port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((node.address, port), timeout=1):
                return
        except OSError:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"ray on {node.name} exited with {node.process.returncode}") from None
            time.sleep(0.5)
    raise TimeoutError(f"{node.name} did not listen on {port} within {timeout:.0f}s")


def _wait_for_started(node: RayNode, timeout: float) -> None:
    """``ray start`` on the node says the node is up (for a worker: registered with the GCS)."""
    log = node.temp_dir.parent / f"{node.name}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if node.process is not None and node.process.poll() is not None:
            raise RuntimeError(f"ray on {node.name} exited with {node.process.returncode}")
        time.sleep(0.5)
    raise TimeoutError(f"{node.name} did not start within {timeout:.0f}s")
