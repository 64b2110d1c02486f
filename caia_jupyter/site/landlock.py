"""Let a process restrict itself, for good, with Linux Landlock and a small seccomp filter.

`restrict(read, write)` is called by a process that is about to run untrusted code: afterwards it
can read only beneath `read`, read and write only beneath `write`, start no program (no EXECUTE
right anywhere, not even Python), open no TCP connection or listener, signal no process and reach
no abstract UNIX socket outside itself, and create no socket at all. `support()` says what this
machine's kernel can enforce (`caia site show`).

Constants and struct layouts come from the kernel's UAPI headers, as named beside each one:
include/uapi/linux/landlock.h, seccomp.h, filter.h, bpf_common.h, audit.h, elf-em.h, prctl.h and
the syscall tables (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h).
ctypes and the standard library only (and caia's error class), so the sandboxed process needs nothing else.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..contracts.errors import CaiaError

ABI_ENV = "CAIA_LANDLOCK_ABI"  # test seam: an integer that can only lower the ABI reported

# Syscall numbers of landlock_create_ruleset / add_rule / restrict_self: the same on every
# architecture (include/uapi/asm-generic/unistd.h, arch/x86/entry/syscalls/syscall_64.tbl).
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1 << 0  # landlock.h: LANDLOCK_CREATE_RULESET_VERSION
_RULE_PATH_BENEATH = 1  # landlock.h: enum landlock_rule_type

# landlock.h: LANDLOCK_ACCESS_FS_*; REFER since ABI 2, TRUNCATE since ABI 3, IOCTL_DEV since ABI 5.
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM (bits 0-12), the rights of ABI 1
_FS_FILE = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # the rights a file can hold
# landlock.h: LANDLOCK_ACCESS_NET_BIND_TCP / CONNECT_TCP (ABI 4), LANDLOCK_SCOPE_* (ABI 6).
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 38, 22  # prctl.h
_SECCOMP_MODE_FILTER = 2  # seccomp.h
# seccomp.h: SECCOMP_RET_*; struct seccomp_data {int nr; __u32 arch; ...}: nr at offset 0, arch at 4.
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_DATA_NR, _DATA_ARCH = 0, 4
# bpf_common.h: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K.
_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_X32_SYSCALL_BIT = 0x40000000  # arch/x86/include/uapi/asm/unistd.h: __X32_SYSCALL_BIT
# The system calls the seccomp filter makes fail with EACCES, by name: x86_64 numbers from
# asm/unistd_64.h, aarch64 numbers from asm-generic/unistd.h. Sockets (Landlock ABI 7 covers TCP
# but not UDP, netlink or UNIX sockets reached by path) and io_uring (which makes sockets and opens
# files without those calls); programs (execveat runs a memfd, which Landlock does not check);
# leaving the process group that the site ends with the run; and what reaches beyond the process
# (BPF, perf events, keyrings, tracing, other processes' memory, mounts and namespaces, modules,
# file handles, swap, reboot).
DENIED = {
    "socket": (41, 198), "socketpair": (53, 199), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "execve": (59, 221), "execveat": (322, 281), "setsid": (112, 157),
    "setpgid": (109, 154), "bpf": (321, 280), "perf_event_open": (298, 241), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "userfaultfd": (323, 282), "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "unshare": (272, 97), "setns": (308, 268), "fsopen": (430, 430), "fsmount": (432, 432), "move_mount": (429, 429),
    "open_tree": (428, 428), "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142),
}
# machine -> (AUDIT_ARCH_* of audit.h: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE, its column of DENIED, capset's number)
_ARCHES = {"x86_64": (0xC000003E, 0, 126), "aarch64": (0xC00000B7, 1, 91)}
_CAPABILITY_VERSION_3, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 0x20080522, 47, 4  # capability.h, prctl.h


class SandboxUnavailable(CaiaError):
    """The sandbox cannot be applied as asked; the message is one line naming what and why."""


class _RulesetAttr(ctypes.Structure):
    """landlock.h: struct landlock_ruleset_attr (handled_access_net since ABI 4, scoped since ABI 6)."""

    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    """landlock.h: struct landlock_path_beneath_attr, packed (12 bytes)."""

    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFilter(ctypes.Structure):
    """filter.h: struct sock_filter, one classic BPF instruction."""

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    """filter.h: struct sock_fprog, a BPF program."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args) -> int:
    """syscall(2) with integer or pointer arguments; returns its result, or -errno."""
    result = _libc.syscall(ctypes.c_long(number), *args)
    return -ctypes.get_errno() if result < 0 else result


def _prctl(option: int, arg2=0, arg3=None) -> int:
    """prctl(2) with up to two arguments (an integer, then a pointer); returns its result, or -errno."""
    result = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), arg3, ctypes.c_ulong(0), ctypes.c_ulong(0))
    return -ctypes.get_errno() if result < 0 else result


def abi_version() -> int:
    """The Landlock ABI this kernel offers (0: none), lowered by $CAIA_LANDLOCK_ABI when set.

    Raises SandboxUnavailable when $CAIA_LANDLOCK_ABI is set but is not an integer."""
    real = max(_syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)), 0)
    seam = os.environ.get(ABI_ENV)
    if seam is None:
        return real
    try:
        return max(min(real, int(seam)), 0)
    except ValueError:
        raise SandboxUnavailable(f"${ABI_ENV}={seam!r} is not an integer: unset it or set an ABI such as 0") from None


def _native_arch() -> tuple[int, int, int] | None:
    """(audit arch, column of DENIED, capset nr) of this process when the seccomp filter knows it, else None."""
    return _ARCHES.get(os.uname().machine) if ctypes.sizeof(ctypes.c_void_p) == 8 else None


def _seccomp_available() -> bool:
    """Whether the kernel takes seccomp filters: a NULL program fails with EFAULT there, EINVAL elsewhere."""
    return _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, None) == -errno.EFAULT


def support() -> dict:
    """What this machine's kernel can enforce: {"landlock_abi": int, "filesystem": bool (ABI >= 1),
    "tcp": bool (ABI >= 4), "scoping": bool (ABI >= 6: signals and abstract UNIX sockets),
    "sockets": bool (the seccomp filter that closes socket(2) can be applied here)}."""
    return _enforced(abi_version(), _native_arch() is not None and _seccomp_available())


def _enforced(abi: int, sockets: bool) -> dict:
    return {"landlock_abi": abi, "filesystem": abi >= 1, "tcp": abi >= 4, "scoping": abi >= 6, "sockets": sockets}


def _handled_fs(abi: int) -> int:
    """Every file-system right Landlock ABI `abi` knows."""
    return _FS_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (FS_IOCTL_DEV if abi >= 5 else 0)


def _add_path_rules(ruleset: int, paths: Iterable[str | Path], allowed: int) -> None:
    """Allow `allowed` beneath each existing path (file rights only for a file); missing paths are skipped."""
    for path in paths:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            raise SandboxUnavailable(f"cannot open {path} to give it to Landlock: {error.strerror}") from None
        try:
            access = allowed if stat.S_ISDIR(os.fstat(fd).st_mode) else allowed & _FS_FILE
            rule = _PathBeneathAttr(access, fd)
            result = _syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                              ctypes.byref(rule), ctypes.c_uint32(0))
            if result < 0:
                raise SandboxUnavailable(f"Landlock refused the rule for {path}: {os.strerror(-result)}")
        finally:
            os.close(fd)


def _apply_landlock(abi: int, read: Iterable[str | Path], write: Iterable[str | Path]) -> None:
    """Handle every right of this ABI, allow reading beneath `read` and reading/writing beneath `write`."""
    handled = _handled_fs(abi)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct as this ABI knows it
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise SandboxUnavailable(f"Landlock ABI {abi} refused the ruleset: {os.strerror(-ruleset)}")
    try:
        _add_path_rules(ruleset, read, FS_READ_FILE | FS_READ_DIR)
        _add_path_rules(ruleset, write, handled & ~FS_EXECUTE)
        result = _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
        if result < 0:
            raise SandboxUnavailable(f"Landlock could not restrict this process: {os.strerror(-result)}")
    finally:
        os.close(ruleset)


def _syscall_filter(audit_arch: int, column: int) -> list[tuple[int, int, int, int]]:
    """The BPF program: kill on a foreign arch; the DENIED calls (and x32 calls) fail with EACCES."""
    denied = [(_JEQ, numbers[column]) for numbers in DENIED.values()]
    if audit_arch == _ARCHES["x86_64"][0]:
        denied.insert(0, (_JGE, _X32_SYSCALL_BIT))
    program = [(_LD_ABS, 0, 0, _DATA_ARCH), (_JEQ, 1, 0, audit_arch), (_RET, 0, 0, _RET_KILL_PROCESS),
               (_LD_ABS, 0, 0, _DATA_NR)]
    # each test jumps over the tests after it and the ALLOW to the EACCES return
    program += [(code, len(denied) - i, 0, k) for i, (code, k) in enumerate(denied)]
    return program + [(_RET, 0, 0, _RET_ALLOW), (_RET, 0, 0, _RET_ERRNO | errno.EACCES)]


def _apply_seccomp(arch: tuple[int, int, int]) -> None:
    program = _syscall_filter(*arch[:2])
    instructions = (_SockFilter * len(program))(*(_SockFilter(*op) for op in program))
    fprog = _SockFprog(len(program), instructions)
    result = _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog))
    if result < 0:
        raise SandboxUnavailable(f"the kernel refused the seccomp filter: {os.strerror(-result)}")


def _drop_capabilities(capset_nr: int) -> None:
    """Empty the effective, permitted, inheritable and ambient capability sets (a site run as root
    keeps none: no CAP_DAC_OVERRIDE, CAP_SYS_ADMIN, CAP_BPF...); dropping needs no privilege."""
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all zero
    result = _syscall(capset_nr, ctypes.byref(header), ctypes.byref(data))
    if result < 0:
        raise SandboxUnavailable(f"capset could not drop this process's capabilities: {os.strerror(-result)}")
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)


def restrict(read: Iterable[str | Path], write: Iterable[str | Path]) -> dict:
    """Restrict the calling process, for good, before untrusted code runs in it.

    Afterwards the process may read files and list directories beneath each `read` path and also
    write, create, rename and delete beneath each `write` path (a path that is a file gets only the
    file rights; paths that do not exist are skipped); it may execute nothing (no program can be
    started, not even Python), and, as this kernel's Landlock ABI allows, neither bind nor connect
    TCP (ABI >= 4) nor signal or reach an abstract UNIX socket of a process outside its sandbox
    (ABI >= 6). A seccomp filter makes the DENIED system calls fail with EACCES (socket(2),
    socketpair(2) and io_uring, closing UDP, raw, netlink and pathname UNIX sockets, which Landlock
    does not cover; execve and execveat; setsid and setpgid; BPF, ptrace, mounts, namespaces and the
    like) and kills the process on a foreign syscall ABI. no_new_privs is set and every capability
    dropped first. With Landlock ABI 0 only no_new_privs and the
    seccomp filter apply; the dict returned says so and the caller decides whether that is enough.
    What was opened before (files, sockets, pipes) keeps the access it was opened with, and a TCP
    socket made before can still not connect or bind: connect to what the process needs first.

    Must run while the process has exactly one thread: both mechanisms bind the calling thread and
    the threads it starts later. Returns what it enforced: {"landlock_abi": int, "filesystem": bool,
    "tcp": bool, "scoping": bool, "sockets": bool}. Raises SandboxUnavailable when the process has
    other threads, runs on an architecture other than x86_64 or aarch64, or the kernel refuses a
    step (the process may then be partly restricted: it must not go on to run untrusted code).
    """
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise SandboxUnavailable(f"restrict needs a single-threaded process, this one has {threads} threads: "
                                 "call it before any thread starts")
    arch = _native_arch()
    if arch is None:
        raise SandboxUnavailable(f"the seccomp filter supports x86_64 and aarch64, not {os.uname().machine}")
    abi, sockets = abi_version(), _seccomp_available()
    result = _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if result < 0:
        raise SandboxUnavailable(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(-result)}")
    _drop_capabilities(arch[2])
    if abi >= 1:
        _apply_landlock(abi, [*read], [*write])
    if sockets:
        _apply_seccomp(arch)
    return _enforced(abi, sockets)
