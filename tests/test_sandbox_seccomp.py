"""The replica's seccomp filter, attacked in a child process as a hostile model would (fast, no stack).

Each probe runs twice: once unfiltered (the control: the attack works on this machine, so the
test would notice a filter that stopped refusing it) and once after ``sandbox.apply_seccomp``.
Refused: connect() whatever Landlock offers, UDP/raw/netlink/unix/MPTCP/SCTP sockets, TCP Fast
Open, user and other namespaces (unshare, setns, clone with CLONE_NEW*; clone3 is ENOSYS so glibc
falls back to clone) and, where Landlock cannot scope signals, signals to any other process.
What a model server needs keeps working: TCP listening sockets, socketpair, asyncio, threads,
subprocess, getaddrinfo for names in /etc/hosts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from endpoints_app.runtime import sandbox

REPO_ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import asyncio, ctypes, errno, json, os, signal, socket, subprocess, sys, threading
sys.path.insert(0, sys.argv[1])
from endpoints_app.runtime import sandbox

mode, tcp_port, udp_port = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = sandbox._SYSCALLS[__import__("platform").machine()]
CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
if mode != "control":
    sandbox.apply_seccomp(confine_signals=mode == "signals")
results = {}

def attempt(name, action):
    try:
        value = action()
        results[name] = "ok" if value is None or not isinstance(value, int) or value >= 0 else errno.errorcode[-value]
    except OSError as exc:
        results[name] = errno.errorcode.get(exc.errno, str(exc))

def raw(nr, *args):
    value = libc.syscall(nr, *args)
    return -ctypes.get_errno() if value < 0 else value

def in_child(action):
    # Runs action in a forked child; its exit code is the errno (0: it worked).
    pid = os.fork()
    if pid == 0:
        try:
            value = action()
            os._exit(-value if value < 0 else 0)
        except BaseException:
            os._exit(99)
    return -os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) or 0

def udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"leak", ("127.0.0.1", udp_port))

def tcp_connect():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as s:
        s.setblocking(True)
        s.settimeout(2)
        s.connect(("127.0.0.1", tcp_port))

def fast_open():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, ("127.0.0.1", tcp_port))

def listen():
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET,
                       socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.bind(("::1" if s.family == socket.AF_INET6 else "127.0.0.1", 0))
        s.listen()

async def serve():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    server.close()
    await server.wait_closed()

def thread():
    seen = []
    t = threading.Thread(target=lambda: seen.append(1))
    t.start(); t.join()
    assert seen == [1]

def own_signal():
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    os.kill(os.getpid(), signal.SIGUSR1)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    assert got == [1, 1], got

def pidfd_signal():
    fd = os.pidfd_open(os.getppid())
    try:
        signal.pidfd_send_signal(fd, 0)
    finally:
        os.close(fd)

attempt("udp sendto", udp)
attempt("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close())
attempt("netlink socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
attempt("unix socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
attempt("mptcp socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close())
attempt("sctp stream socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close())
attempt("tcp connect", tcp_connect)
attempt("tcp fast open", fast_open)
attempt("unshare user ns", lambda: in_child(lambda: raw(NR["unshare"], CLONE_NEWUSER)))
attempt("clone new user ns", lambda: in_child(lambda: raw(NR["clone"], CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)))
attempt("clone new net ns", lambda: in_child(lambda: raw(NR["clone"], CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0)))
attempt("setns", lambda: raw(NR["setns"], os.open("/proc/self/ns/uts", os.O_RDONLY), 0))
attempt("clone3", lambda: raw(NR["clone3"], None, 0))
attempt("signal parent", lambda: os.kill(os.getppid(), 0))
attempt("signal process group", lambda: os.kill(0, 0))
attempt("pidfd signal parent", pidfd_signal)
def steal_fd():
    fd = os.pidfd_open(os.getppid())
    try:
        return raw(NR["pidfd_getfd"], fd, 0, 0)
    finally:
        os.close(fd)

iov = (ctypes.c_char * 8)()
local = (ctypes.c_void_p * 2)(ctypes.cast(iov, ctypes.c_void_p), 8)
remote = (ctypes.c_void_p * 2)(0x10000, 8)
attempt("read parent memory", lambda: raw(NR["process_vm_readv"], os.getppid(), local, 1, remote, 1, 0))
attempt("steal a parent fd", steal_fd)
attempt("ptrace peek parent", lambda: raw(NR["ptrace"], 2, os.getppid(), 0, 0))  # PTRACE_PEEKDATA, not attached
attempt("tcp listen", listen)
attempt("socketpair", lambda: [s.close() for s in socket.socketpair()])
attempt("asyncio server", lambda: asyncio.run(serve()))
attempt("thread", thread)
attempt("subprocess", lambda: subprocess.run(["/bin/true"], check=True))
attempt("getaddrinfo localhost", lambda: socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM))
attempt("own signals", own_signal)
print(json.dumps(results))
"""

ATTACKS = [
    "udp sendto",
    "raw socket",
    "netlink socket",
    "unix socket",
    "mptcp socket",
    "tcp connect",
    "tcp fast open",
    "unshare user ns",
    "clone new user ns",
    "clone new net ns",
    "setns",
]
NEEDED = ["tcp listen", "socketpair", "asyncio server", "thread", "subprocess", "getaddrinfo localhost", "own signals"]
SIGNALS = ["signal parent", "signal process group", "pidfd signal parent"]


@pytest.fixture(scope="module")
def targets() -> Iterator[tuple[int, int, list[bytes]]]:
    """A TCP and a UDP server on loopback; the list collects whatever reaches either."""
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            for server in (tcp, udp):
                try:
                    if server is tcp:
                        conn, _ = tcp.accept()
                        received.append(b"tcp connection")
                        conn.close()
                    else:
                        received.append(udp.recv(64))
                except OSError:
                    pass

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    yield tcp.getsockname()[1], udp.getsockname()[1], received
    stop.set()
    thread.join(2)
    tcp.close()
    udp.close()


def probe(mode: str, targets: tuple[int, int, list[bytes]]) -> dict[str, str]:
    tcp_port, udp_port, _ = targets
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO_ROOT), mode, str(tcp_port), str(udp_port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_unfiltered_the_attacks_work_here(targets: tuple[int, int, list[bytes]]) -> None:
    """The control: on this machine each attack succeeds without the filter."""
    seen = probe("control", targets)
    # The kernel got as far as the address or the tracee: permission was not what stopped them.
    assert seen["read parent memory"] in ("ok", "EFAULT") and seen["steal a parent fd"] == "ok"
    assert seen["ptrace peek parent"] == "ESRCH"
    expected_ok = ATTACKS + NEEDED + SIGNALS
    assert {name: seen[name] for name in expected_ok} == {name: "ok" for name in expected_ok}
    assert seen["clone3"] in ("EFAULT", "EINVAL")  # the kernel looked at the (bad) arguments
    assert b"leak" in targets[2] and b"tcp connection" in targets[2]


@pytest.mark.skipif(sandbox.platform.machine() not in sandbox._AUDIT_ARCH, reason="seccomp filter for x86_64/aarch64")
@pytest.mark.parametrize("mode", ["filter", "signals"])
def test_the_filter_refuses_every_way_out_and_keeps_what_a_model_server_needs(
    mode: str, targets: tuple[int, int, list[bytes]]
) -> None:
    targets[2].clear()
    seen = probe(mode, targets)
    refused = {name: seen[name] for name in ATTACKS}
    assert refused == {
        "udp sendto": "EACCES",
        "raw socket": "EACCES",
        "netlink socket": "EACCES",
        "unix socket": "EACCES",
        "mptcp socket": "EACCES",
        "tcp connect": "EPERM",
        "tcp fast open": "EPERM",
        "unshare user ns": "EPERM",
        "clone new user ns": "EPERM",
        "clone new net ns": "EPERM",
        "setns": "EPERM",
    }
    assert seen["sctp stream socket"] == "EACCES"
    assert [seen["read parent memory"], seen["steal a parent fd"], seen["ptrace peek parent"]] == ["EPERM"] * 3
    assert seen["clone3"] == "ENOSYS"  # so glibc falls back to clone, whose flags the filter reads
    assert {name: seen[name] for name in NEEDED} == {name: "ok" for name in NEEDED}
    signals = {name: seen[name] for name in SIGNALS}
    if mode == "signals":  # Landlock ABI < 6: seccomp keeps signals inside the replica
        assert signals == {name: "EPERM" for name in SIGNALS}
    else:  # left to Landlock's signal scoping
        assert signals == {name: "ok" for name in SIGNALS}
    assert targets[2] == []  # nothing reached the TCP or the UDP server


def test_the_isolation_string_names_what_an_older_kernel_lacks() -> None:
    assert sandbox.Isolation(landlock_abi=7, seccomp=True, user="root-no-caps").describe() == (
        "landlock-abi7+seccomp+root-no-caps"
    )
    old = sandbox.Isolation(landlock_abi=3, seccomp=True, signals_own_pid=True)
    assert old.describe() == (
        "landlock-abi3+seccomp+signals-own-pid (lacks: no-tcp-port-rules, no-device-ioctl-rules, no-scoping)"
    )
    assert any("signals are confined by seccomp" in why for _, why in old.gaps())
    assert (
        sandbox.Isolation(landlock_abi=5, seccomp=True, signals_own_pid=True).describe().endswith("(lacks: no-scoping)")
    )
    assert sandbox.Isolation().describe() == "none"
    assert sandbox.Isolation(seccomp=True, signals_own_pid=True).describe() == (
        "seccomp+signals-own-pid (lacks: no-landlock)"
    )
    assert os.environ.get("MODELFLEET_REPLICA_SANDBOX") is None
