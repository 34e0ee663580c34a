"""The replica sandbox: what model code (hostile, registered by any editor) may touch.

A model server confines itself in two stages, with Linux features an unprivileged process may use:

1. **Early**, at the top of ``model_server`` before any import starts a thread (numpy's BLAS pool
   does): when the runtime agent runs as root the process first drops to an unprivileged user
   (``nobody``); then a Landlock ruleset allows reading only the Python installation, the system
   libraries, the ``endpoints_app`` package and this replica's own model, writing only its own
   scratch folder and log, and no TCP connection at all (a warm standby, which does not know its
   deployment yet, gets a folder of its own into which the agent links the model and the log at
   assignment: nothing of another deployment either way); abstract unix sockets and signals
   outside the sandbox are out of scope (Landlock ABI 6); then a seccomp filter (apply_seccomp)
   refuses what Landlock of any generation leaves open: connect() and TCP Fast Open, every socket
   but TCP over IPv4/IPv6 (no UDP, raw, unix, netlink, MPTCP or SCTP), namespaces (unshare, setns,
   clone with CLONE_NEW*; clone3 is ENOSYS), io_uring, ptrace and reading other processes' memory
   or descriptors, and, where Landlock cannot scope signals, signals to any other process.
2. **Final**, once the replica knows which model it serves (for a warm standby: after it received
   its assignment): a second Landlock layer narrows reading to its own model folder, writing to its
   own scratch folder, and binding to its own port.

Landlock applies to the calling thread and the threads it starts later, hence the early stage:
threads that exist before the final stage still carry the early one, which already keeps the
control plane's files, sockets, processes and network out of reach.  Landlock also stops a
sandboxed process from ptrace-ing (so from reading ``/proc/<pid>/environ`` or ``/mem`` of) any
process outside its own sandbox, and each replica's final stage is a sandbox of its own.

On kernels older than Landlock ABI 7 part of this is missing; Isolation.gaps() names each gap,
the isolation string lists them (``lacks: ...``) and the agent and the replica log a warning.

**Multiprocessing stays closed.**  ``multiprocessing.Lock``/``Queue`` and joblib's process pool
need POSIX semaphores, which glibc makes in ``/dev/shm``; that folder is shared by every process
on the host, so allowing it would give replicas a channel to each other (and to anything else
that keeps state there), and a private replacement would need a mount namespace, which the
sandbox refuses.  So ``/dev/shm`` is not allowed: model code gets threads (and subprocesses
confined like itself), and the agent sets ``JOBLIB_MULTIPROCESSING=0`` so joblib uses threads
without warning.

This module uses the standard library only: it runs before anything else is imported.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import pwd
import stat
import struct
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("endpoints_app.runtime.sandbox")

# The environment variable the runtime agent passes the early stage's plan in (JSON, see Plan).
PLAN_ENV = "MODELFLEET_REPLICA_SANDBOX"
# The unprivileged user replicas run as when the agent runs as root.
REPLICA_USER = "nobody"

# --- Landlock (include/uapi/linux/landlock.h) -----------------------------------------------------
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

FS_ALL_ABI1 = (1 << 13) - 1
READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# Rights that make sense on a file rule (the others are for directories only).
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
WRITE = (
    READ
    | FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SYM
    | FS_MAKE_FIFO
    | FS_MAKE_SOCK
    | FS_REFER
    | FS_TRUNCATE
)

PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1

# What imports and the model server itself read outside the Python installation.
SYSTEM_READ_PATHS = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/opt/conda",
    "/sys/devices/system/cpu",  # os.cpu_count, OpenBLAS, psutil
    "/sys/fs/cgroup",  # CPU quotas (joblib, psutil)
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/gai.conf",
    "/etc/resolv.conf",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/group",
    "/proc/meminfo",  # psutil's memory percentage
    "/proc/stat",
    "/proc/cpuinfo",
    "/proc/loadavg",
    "/proc/sys/kernel/osrelease",
    "/dev/urandom",
    "/dev/random",
)
# Character devices used for writing (Python and libraries open /dev/null for subprocesses).
DEVICE_WRITE_PATHS = ("/dev/null", "/dev/zero", "/dev/full")
# Devices a GPU replica needs (read, write and ioctl), and what the CUDA driver reads at start.
GPU_DEVICE_PREFIXES = ("/dev/nvidia", "/dev/dri")
GPU_READ_PATHS = ("/proc/driver/nvidia", "/sys", "/dev/nvidia-caps")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SandboxError(RuntimeError):
    """The sandbox could not be set up as planned: the replica must not run model code."""


@dataclass
class Plan:
    """What one stage allows, beyond the system paths every Python process needs."""

    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    # Existing files beneath these may be written (not created, removed or truncated): the replica
    # logs, which a warm standby opens only once it knows which replica it becomes.
    append: list[str] = field(default_factory=list)
    # The port the replica may bind (final stage); None leaves binding to the next stage.
    bind_port: int | None = None
    # Drop to this user when running as root ("" keeps the current user).
    user: str = ""
    gpu: bool = False

    def to_env(self) -> str:
        return json.dumps(
            {"read": self.read, "write": self.write, "append": self.append, "user": self.user, "gpu": self.gpu},
            separators=(",", ":"),
        )

    @classmethod
    def from_env(cls, text: str) -> Plan:
        data = json.loads(text)
        return cls(
            read=[str(p) for p in data.get("read", [])],
            write=[str(p) for p in data.get("write", [])],
            append=[str(p) for p in data.get("append", [])],
            user=str(data.get("user") or ""),
            gpu=bool(data.get("gpu")),
        )


# --- Landlock -----------------------------------------------------------------------------------


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    version = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    return int(version) if version > 0 else 0


def handled_fs(abi: int) -> int:
    handled = FS_ALL_ABI1
    if abi >= 2:
        handled |= FS_REFER
    if abi >= 3:
        handled |= FS_TRUNCATE
    if abi >= 5:
        handled |= FS_IOCTL_DEV
    return handled


def _set_no_new_privs() -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SandboxError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")


def system_read_paths() -> list[str]:
    """The Python installation, its packages and the system files imports read (only those that exist)."""
    paths = [*SYSTEM_READ_PATHS, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    # The package itself (its code only: the repository root may hold the data directory).
    paths.append(str(Path(__file__).resolve().parents[1]))
    # Site-packages of the venv and any other installation dirs on sys.path that are not the cwd.
    cwd = os.getcwd()
    for entry in sys.path:
        if entry and entry != cwd and os.path.isdir(entry) and ("site-packages" in entry or "dist-packages" in entry):
            paths.append(entry)
    # The interpreter binary may be a symlink into another installation (uv, pyenv).
    paths.append(str(Path(os.path.realpath(sys.executable)).parent.parent))
    return paths


class _Ruleset:
    def __init__(self, abi: int, *, fs: int, net: int, scoped: int) -> None:
        self.abi = abi
        self.fs = fs
        attr = struct.pack("QQQ", fs, net, scoped)
        size = 24 if abi >= 6 else 16
        buffer = ctypes.create_string_buffer(attr[:size], size)
        fd = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buffer, ctypes.c_size_t(size), 0)
        if fd < 0:
            raise SandboxError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
        self.fd = int(fd)

    def allow_path(self, path: str, access: int) -> bool:
        """Allow ``access`` beneath ``path``; False when it does not exist (nothing to allow)."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if not os.path.isdir(path):
                access &= FILE_RIGHTS
            access &= self.fs
            rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
            if _libc.syscall(SYS_LANDLOCK_ADD_RULE, self.fd, LANDLOCK_RULE_PATH_BENEATH, rule, 0) != 0:
                raise SandboxError(f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)
        return True

    def allow_bind(self, port: int) -> None:
        rule = ctypes.create_string_buffer(struct.pack("QQ", NET_BIND_TCP, port), 16)
        if _libc.syscall(SYS_LANDLOCK_ADD_RULE, self.fd, LANDLOCK_RULE_NET_PORT, rule, 0) != 0:
            raise SandboxError(f"landlock_add_rule(bind {port}) failed: {os.strerror(ctypes.get_errno())}")

    def enforce(self) -> None:
        _set_no_new_privs()
        try:
            if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, self.fd, 0) != 0:
                raise SandboxError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(self.fd)


def apply_landlock(
    *,
    read: Iterable[str],
    write: Iterable[str],
    bind_port: int | None,
    append: Iterable[str] = (),
    gpu: bool = False,
) -> int:
    """Add one Landlock layer; returns the ABI used (0: the kernel has none, nothing was done)."""
    abi = landlock_abi()
    if abi == 0:
        return 0
    net = (NET_CONNECT_TCP | (NET_BIND_TCP if bind_port is not None else 0)) if abi >= 4 else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    ruleset = _Ruleset(abi, fs=handled_fs(abi), net=net, scoped=scoped)
    for path in system_read_paths():
        ruleset.allow_path(path, READ)
    # Only this process's own /proc directory: not the agent's or another replica's.
    ruleset.allow_path(f"/proc/{os.getpid()}", READ)
    for path in DEVICE_WRITE_PATHS:
        ruleset.allow_path(path, FS_READ_FILE | FS_WRITE_FILE)
    if gpu:
        for path in GPU_READ_PATHS:
            ruleset.allow_path(path, READ)
        for prefix in GPU_DEVICE_PREFIXES:
            parent, name = os.path.split(prefix)
            for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
                if entry.startswith(name):
                    ruleset.allow_path(os.path.join(parent, entry), READ | FS_WRITE_FILE | FS_IOCTL_DEV)
    for path in read:
        ruleset.allow_path(path, READ)
    for path in write:
        ruleset.allow_path(path, WRITE)
    for path in append:
        ruleset.allow_path(path, READ | FS_WRITE_FILE)
    if bind_port is not None and abi >= 4:
        ruleset.allow_bind(bind_port)
    ruleset.enforce()
    return abi


# --- seccomp: what Landlock of any generation leaves open -------------------------------------------

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# The system calls the filter looks at, per architecture (asm/unistd.h).
_SYSCALLS = {
    "x86_64": {
        "socket": 41,
        "connect": 42,
        "sendto": 44,
        "sendmsg": 46,
        "sendmmsg": 307,
        "clone": 56,
        "clone3": 435,
        "unshare": 272,
        "setns": 308,
        "kill": 62,
        "tkill": 200,
        "tgkill": 234,
        "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297,
        "pidfd_send_signal": 424,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "pidfd_getfd": 438,
    },
    "aarch64": {
        "socket": 198,
        "connect": 203,
        "sendto": 206,
        "sendmsg": 211,
        "sendmmsg": 269,
        "clone": 220,
        "clone3": 435,
        "unshare": 97,
        "setns": 268,
        "kill": 129,
        "tkill": 130,
        "tgkill": 131,
        "rt_sigqueueinfo": 138,
        "rt_tgsigqueueinfo": 240,
        "pidfd_send_signal": 424,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "ptrace": 117,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "pidfd_getfd": 438,
    },
}
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_TYPE_MASK = 0xF  # the rest of socket()'s type argument is SOCK_NONBLOCK / SOCK_CLOEXEC
IPPROTO_TCP = 6
MSG_FASTOPEN = 0x20000000
# clone()'s namespace flags (CLONE_NEWTIME, 0x80, is an exit-signal bit for clone() and only
# exists for unshare and clone3, both refused whole).
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
EPERM = 1
EACCES = 13
ENOSYS = 38
SIGNAL_SYSCALLS_BY_PID = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")

# BPF opcodes (linux/filter.h)
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _AND_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


class _Program:
    """A seccomp BPF program written with labels; jumps are resolved when it is assembled."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int, str | int, str | int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, k, jt, jf))

    def load_arg(self, index: int) -> None:
        """The low 32 bits of syscall argument ``index`` (every argument checked here is an int)."""
        self.op(_LD_W_ABS, 16 + 8 * index)

    def ret(self, value: int) -> None:
        self.op(_RET_K, value)

    def assemble(self) -> bytes:
        out = []
        for index, (code, k, jt, jf) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                if isinstance(target, str):
                    offset = self.labels[target] - index - 1
                    if not 0 <= offset <= 255:
                        raise SandboxError(f"seccomp program: jump to {target} out of range")
                    offsets.append(offset)
                else:
                    offsets.append(target)
            out.append(_bpf(code, k, offsets[0], offsets[1]))
        return b"".join(out)


def seccomp_program(machine: str, *, confine_signals_to: int | None) -> tuple[bytes, int]:
    """The filter apply_seccomp installs (see there); returns (code, number of instructions)."""
    nr = _SYSCALLS[machine]
    deny_nosys = SECCOMP_RET_ERRNO | ENOSYS
    deny_eperm = SECCOMP_RET_ERRNO | EPERM
    deny_eacces = SECCOMP_RET_ERRNO | EACCES
    p = _Program()
    p.op(_LD_W_ABS, 4)  # arch
    p.op(_JEQ_K, _AUDIT_ARCH[machine], 1, 0)
    p.ret(deny_nosys)  # another ABI (i386 via int 0x80)
    p.op(_LD_W_ABS, 0)  # the syscall number
    p.op(_JGE_K, 0x40000000, "nosys", 0)  # x32 numbers
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register", "clone3"):
        p.op(_JEQ_K, nr[name], "nosys", 0)
    for name in ("connect", "unshare", "setns", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd"):
        p.op(_JEQ_K, nr[name], "eperm", 0)
    p.op(_JEQ_K, nr["clone"], "clone", 0)
    p.op(_JEQ_K, nr["socket"], "socket", 0)
    p.op(_JEQ_K, nr["sendto"], "flags_arg3", 0)
    p.op(_JEQ_K, nr["sendmmsg"], "flags_arg3", 0)
    p.op(_JEQ_K, nr["sendmsg"], "flags_arg2", 0)
    if confine_signals_to is not None:
        for name in SIGNAL_SYSCALLS_BY_PID:
            p.op(_JEQ_K, nr[name], "own_pid", 0)
        p.op(_JEQ_K, nr["pidfd_send_signal"], "eperm", 0)
    p.ret(SECCOMP_RET_ALLOW)  # every other system call
    # The argument checks; BPF jumps only forward, so the verdicts come last.
    p.label("clone")
    p.load_arg(0)  # flags (x86_64 and aarch64 alike)
    p.op(_JSET_K, CLONE_NEW_FLAGS, "eperm", "allow")
    p.label("socket")
    p.load_arg(0)  # family
    p.op(_JEQ_K, AF_INET, "inet", 0)
    p.op(_JEQ_K, AF_INET6, "inet", "eacces")
    p.label("inet")
    p.load_arg(1)  # type
    p.op(_AND_K, SOCK_TYPE_MASK)
    p.op(_JEQ_K, SOCK_STREAM, 0, "eacces")
    p.load_arg(2)  # protocol: 0 or TCP (not MPTCP, not SCTP)
    p.op(_JEQ_K, 0, "allow", 0)
    p.op(_JEQ_K, IPPROTO_TCP, "allow", "eacces")
    p.label("flags_arg3")
    p.load_arg(3)
    p.op(_JSET_K, MSG_FASTOPEN, "eperm", "allow")
    p.label("flags_arg2")
    p.load_arg(2)
    p.op(_JSET_K, MSG_FASTOPEN, "eperm", "allow")
    if confine_signals_to is not None:
        p.label("own_pid")
        p.load_arg(0)
        p.op(_JEQ_K, confine_signals_to, "allow", "eperm")
    p.label("allow")
    p.ret(SECCOMP_RET_ALLOW)
    p.label("nosys")
    p.ret(deny_nosys)
    p.label("eperm")
    p.ret(deny_eperm)
    p.label("eacces")
    p.ret(deny_eacces)
    return p.assemble(), len(p.code)


def apply_seccomp(*, confine_signals: bool = False) -> bool:
    """Install the replica's seccomp filter on every thread; False on an architecture it does not know.

    * ``connect()`` is refused outright (EPERM), whatever Landlock offers: a model server accepts
      connections and never makes one, so TCP connections are refused on kernels without
      Landlock's network rules (ABI < 4) too.  TCP Fast Open (``sendto``/``sendmsg``/``sendmmsg``
      with ``MSG_FASTOPEN``), which connects without ``connect()``, is refused as well.
    * ``socket()`` makes TCP sockets over IPv4/IPv6 only (EACCES otherwise): no UDP or raw
      sockets (a datagram needs no connect), no MPTCP or SCTP, no unix-domain sockets (Landlock of
      this kernel generation does not cover connecting to a pathname socket such as the embedded
      Redis's), no netlink (nothing in the model server needs it: glibc's getaddrinfo does without),
      no other family.  ``socketpair()`` stays: asyncio's self-pipe uses it, and it reaches no one.
    * ``unshare``, ``setns`` and ``clone`` with a ``CLONE_NEW*`` flag are refused (EPERM): no user
      namespace (whose root could do what this process may not) or any other namespace.
      ``clone3`` gets ENOSYS, so glibc falls back to ``clone`` for threads and ``posix_spawn``,
      where the flags can be read (``clone3`` passes them in memory, out of a filter's reach).
    * io_uring gets ENOSYS: it could create sockets and connect around this filter.
    * ``ptrace``, ``process_vm_readv``/``writev`` and ``pidfd_getfd`` are refused (EPERM): Landlock
      already keeps them inside the sandbox, this keeps them out where the kernel has no Landlock
      (a replica of a non-root agent runs as the agent's user and could otherwise read its memory).
    * With ``confine_signals`` (kernels whose Landlock cannot scope signals, ABI < 6): ``kill``,
      ``tkill``, ``tgkill``, ``rt_sigqueueinfo`` and ``rt_tgsigqueueinfo`` only to this process's
      own pid (its threads included: tgkill names the process first), and ``pidfd_send_signal``
      not at all.  Not 0 or a negative pid: the replica shares the runtime agent's process group.
      The cost: a replica cannot signal processes it started itself on such a kernel.
    """
    machine = platform.machine()
    if machine not in _AUDIT_ARCH:
        return False
    code, length = seccomp_program(machine, confine_signals_to=os.getpid() if confine_signals else None)
    filters = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(length, ctypes.cast(filters, ctypes.c_void_p))
    _set_no_new_privs()
    result = _libc.syscall(SYS_SECCOMP[machine], SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(prog))
    if result != 0:
        raise SandboxError(f"seccomp filter failed: {os.strerror(ctypes.get_errno())}")
    return True


# --- the unprivileged user ------------------------------------------------------------------------


def replica_ids(user: str = REPLICA_USER) -> tuple[int, int]:
    """(uid, gid) of the user replicas run as when the agent is root."""
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def drop_privileges(user: str) -> str:
    """Become ``user`` (all threads: glibc's set*id calls apply process-wide); returns its name."""
    uid, gid = replica_ids(user)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:  # pragma: no cover - the kernel refused
        raise SandboxError(f"could not drop to user {user}")
    # A credential change clears the parent-death signal; the agent relies on it.
    _libc.prctl(PR_SET_PDEATHSIG, 15, 0, 0, 0)
    return user


def reachable_by(uid: int, gid: int, paths: Iterable[str]) -> str | None:
    """The first of ``paths`` that user ``uid`` could not reach (a parent it may not enter), or None.

    A replica that drops to ``nobody`` still needs the Python installation: under a private home
    (``/root/.pyenv``) it is out of reach, and the agent keeps replicas at uid 0 without
    capabilities instead.
    """
    for path in paths:
        current = Path(os.path.realpath(path))
        for directory in [*reversed(current.parents), current]:
            try:
                st = directory.stat()
            except OSError:
                break
            if not stat.S_ISDIR(st.st_mode):
                continue
            if st.st_uid == uid:
                allowed = st.st_mode & stat.S_IXUSR
            elif st.st_gid == gid:
                allowed = st.st_mode & stat.S_IXGRP
            else:
                allowed = st.st_mode & stat.S_IXOTH
            if not allowed:
                return str(directory)
    return None


_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
_CAPABILITY_VERSION_3 = 0x20080522
PR_CAPBSET_DROP = 24


def drop_capabilities() -> bool:
    """Keep uid 0 but give up every capability, for good (bounding set, then capset).

    Without capabilities root is an ordinary owner of root's files: Landlock decides what it may
    open, and it can no longer override permissions, ptrace, use raw sockets or change its ids.
    """
    machine = platform.machine()
    if machine not in _SYS_CAPSET:
        return False
    for cap in range(64):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last capability: fine
    header = struct.pack("Ii", _CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two {effective, permitted, inheritable} u32 triples, all zero
    hdr = ctypes.create_string_buffer(header, 8)
    buf = ctypes.create_string_buffer(data, 24)
    if _libc.syscall(_SYS_CAPSET[machine], hdr, buf) != 0:
        raise SandboxError(f"capset failed: {os.strerror(ctypes.get_errno())}")
    return True


# --- the two stages -------------------------------------------------------------------------------


# What a Landlock ABI lacks, as (short tag for the isolation string, what it means for a replica).
_LANDLOCK_GAPS = (
    (
        1,
        "no-landlock",
        "files are not confined: model code reads and writes whatever its user may (seccomp still refuses "
        "connections, namespaces, ptrace and signals to other processes)",
    ),
    (4, "no-tcp-port-rules", "the replica may bind any free TCP port (seccomp still refuses every connect)"),
    (5, "no-device-ioctl-rules", "ioctl on device files is not confined"),
    (
        6,
        "no-scoping",
        "signals are confined by seccomp to the replica's own process (it cannot signal children it starts); "
        "abstract unix sockets stay closed because seccomp refuses unix sockets",
    ),
)


@dataclass
class Isolation:
    """What confines this process, for the log and the replica's /health."""

    landlock_abi: int = 0
    seccomp: bool = False
    user: str = ""
    stages: int = 0
    # seccomp confines signals to the process itself (Landlock cannot scope them on this kernel).
    signals_own_pid: bool = False

    def gaps(self) -> list[tuple[str, str]]:
        """What this kernel's sandbox does not confine, newest Landlock ABI (7) being the reference."""
        found = [(tag, why) for abi, tag, why in _LANDLOCK_GAPS if self.landlock_abi < abi]
        if self.landlock_abi == 0:
            found = found[:1]
        if not self.seccomp:
            found.append(
                (
                    "no-seccomp",
                    "no seccomp filter on this architecture: connect, UDP/raw/unix sockets, namespaces, io_uring, "
                    "ptrace and signals are not filtered",
                )
            )
        return found

    def describe(self) -> str:
        parts = []
        if self.landlock_abi:
            parts.append(f"landlock-abi{self.landlock_abi}")
        if self.seccomp:
            parts.append("seccomp")
        if self.signals_own_pid and self.seccomp:
            parts.append("signals-own-pid")
        if self.user:
            parts.append(self.user if self.user == "root-no-caps" else f"user-{self.user}")
        text = "+".join(parts) or "none"
        gaps = [tag for tag, _ in self.gaps()]
        return f"{text} (lacks: {', '.join(gaps)})" if gaps and parts else text


ISOLATION = Isolation()
_early_plan: Plan | None = None


def enter_early(plan: Plan) -> Isolation:
    """Stage 1 (see the module docstring). Raises SandboxError when a step the kernel offers fails."""
    global _early_plan
    if plan.user and os.geteuid() == 0:
        if plan.user == "root":
            ISOLATION.user = "root-no-caps" if drop_capabilities() else ""
        else:
            ISOLATION.user = drop_privileges(plan.user)
    ISOLATION.landlock_abi = apply_landlock(
        read=plan.read, write=plan.write, append=plan.append, bind_port=None, gpu=plan.gpu
    )
    # Landlock scopes signals from ABI 6; before that the seccomp filter keeps them in this process.
    ISOLATION.signals_own_pid = ISOLATION.landlock_abi < 6
    ISOLATION.seccomp = apply_seccomp(confine_signals=ISOLATION.signals_own_pid)
    ISOLATION.stages = 1
    _early_plan = plan
    return ISOLATION


def enter_from_environment() -> Isolation | None:
    """Stage 1 when the runtime agent asked for it (``MODELFLEET_REPLICA_SANDBOX``); else None."""
    text = os.environ.pop(PLAN_ENV, None)
    if not text:
        return None
    return enter_early(Plan.from_env(text))


def enter_final(*, model_path: str, scratch: str, port: int) -> Isolation:
    """Stage 2: only this replica's model (read), scratch folder (write) and port (bind); the log
    stays open on fds 1 and 2, which Landlock does not take back.

    The scratch folder becomes TMPDIR and HOME, so libraries that write temporary files or
    caches write there.
    """
    Path(scratch).mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = os.environ["HOME"] = scratch
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    gpu = _early_plan.gpu if _early_plan is not None else False
    abi = apply_landlock(read=[model_path], write=[scratch], bind_port=port, gpu=gpu)
    if abi:
        ISOLATION.landlock_abi = abi
        ISOLATION.stages = 2
    return ISOLATION
