"""Confining the model worker process: Landlock, no new privileges, no capabilities, a uid.

Applied by the worker to itself (``p2pagent.inference.worker_main``) before it loads any
model, in this order, each step one the next cannot undo:

1. ``setgroups([])``, ``setgid``, ``setuid`` to the worker uid when the daemon runs as root and
   that uid can reach the interpreter (on a host where Python lives under a 0700 ``/root``, it
   cannot: the worker then stays uid 0 and step 3 takes every privilege root has away).
2. ``PR_SET_NO_NEW_PRIVS``: no exec can gain privileges again (and Landlock requires it).
3. All capabilities dropped: bounding, ambient, effective, permitted and inheritable sets.
4. Landlock: file access only beneath the paths the daemon allows (the interpreter, the
   Python path, system libraries, /proc, /sys, /dev and the worker's scratch folder);
   no TCP bind or connect; no signals or abstract unix sockets outside the worker (each
   where the kernel's ABI has it). The node's certificate folder and data folder are never
   allowed: the daemon leaves out any allowed root that contains one of them.

Linux only; everything goes through raw syscalls with ctypes, since Python has no binding.
The probe (``landlock_abi``) is a syscall too: /sys/kernel/security need not be mounted.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

# Generic syscall numbers (x86_64 and aarch64 share them for these new calls).
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Filesystem rights, by the ABI that introduced them.
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REMOVE_DIR = 1 << 4
_FS_REMOVE_FILE = 1 << 5
_FS_MAKE_CHAR = 1 << 6
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_MAKE_SOCK = 1 << 9
_FS_MAKE_FIFO = 1 << 10
_FS_MAKE_BLOCK = 1 << 11
_FS_MAKE_SYM = 1 << 12
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

#: Rights that may be granted on a regular file (the rest only apply to directories).
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV


class Access(Enum):
    """What a rule grants beneath its path."""

    READ = "read"  # read and execute files, list folders
    DEVICES = "devices"  # READ plus writing and ioctl on device files (/dev: GPUs, /dev/null)
    WRITE = "write"  # everything (the worker's own scratch folder)


def _fs_all(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def _rights(access: Access, abi: int) -> int:
    read = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
    if access is Access.READ:
        return read
    if access is Access.DEVICES:
        return read | _FS_WRITE_FILE | (_FS_IOCTL_DEV if abi >= 5 else 0)
    return _fs_all(abi)


@dataclass(frozen=True)
class Rule:
    path: str
    access: Access


@dataclass(frozen=True)
class SandboxReport:
    """What was applied, for the daemon's start-up log line (and the tests)."""

    uid: int
    gid: int
    no_new_privs: bool
    capabilities_dropped: bool
    #: Landlock ABI version enforced; 0 when not enforced (see ``landlock_error``).
    landlock_abi: int
    landlock_error: str = ""
    #: Allowed roots skipped because they do not exist.
    skipped: tuple[str, ...] = ()


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is absent or disabled."""
    if platform.system() != "Linux":
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
        ctypes.c_uint32(_CREATE_RULESET_VERSION),
    )  # fmt: skip
    return int(abi) if abi > 0 else 0


def path_is_reachable(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (without capabilities) can traverse to and read ``path``."""
    p = Path(path).resolve()
    for d in (*reversed(p.parents), p):
        try:
            st = d.stat()
        except OSError:
            return False
        need = 0o1 if d != p or d.is_dir() else 0o4
        if st.st_uid == uid:
            ok = st.st_mode & (need << 6)
        elif st.st_gid == gid:
            ok = st.st_mode & (need << 3)
        else:
            ok = st.st_mode & need
        if not ok:
            return False
    return True


def _drop_uid(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _drop_capabilities(libc: ctypes.CDLL) -> bool:
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        # EINVAL for capabilities this kernel does not know; EPERM once CAP_SETPCAP is gone
        # (the bounding set can only be cut while we still hold it, so this loop runs first).
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))

    class Data(ctypes.Structure):
        _fields_ = (
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        )

    header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (Data * 2)()
    return bool(libc.capset(ctypes.byref(header), data) == 0)


def _restrict_landlock(libc: ctypes.CDLL, abi: int, rules: list[Rule]) -> tuple[str, ...]:
    class RulesetAttr(ctypes.Structure):
        _fields_ = (
            ("handled_access_fs", ctypes.c_uint64),
            ("handled_access_net", ctypes.c_uint64),
            ("scoped", ctypes.c_uint64),
        )

    class PathBeneathAttr(ctypes.Structure):
        _pack_ = 1
        _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))

    attr = RulesetAttr(
        _fs_all(abi),
        (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    libc.syscall.restype = ctypes.c_long
    ruleset = _check(
        libc.syscall(
            ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
            ctypes.c_size_t(size), ctypes.c_uint32(0),
        ),
        "landlock_create_ruleset",
    )  # fmt: skip
    skipped: list[str] = []
    try:
        for rule in rules:
            try:
                fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                skipped.append(rule.path)
                continue
            try:
                rights = _rights(rule.access, abi)
                if not os.path.isdir(rule.path):
                    rights &= _FILE_RIGHTS
                beneath = PathBeneathAttr(rights, fd)
                _check(
                    libc.syscall(
                        ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                        ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(beneath),
                        ctypes.c_uint32(0),
                    ),
                    f"landlock_add_rule({rule.path})",
                )  # fmt: skip
            finally:
                os.close(fd)
        _check(
            libc.syscall(
                ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset),
                ctypes.c_uint32(0),
            ),
            "landlock_restrict_self",
        )  # fmt: skip
    finally:
        os.close(ruleset)
    return tuple(skipped)


def confine(rules: list[Rule], uid: int | None, gid: int | None) -> SandboxReport:
    """Confines this process for good (see the module docstring); returns what was applied.

    Raises OSError only where a step that must not fail did (the uid switch, no-new-privs);
    Landlock missing from the kernel is reported, not raised: the daemon decides what to log.
    """
    libc = _libc()
    if uid is not None and gid is not None and os.getuid() != uid:
        _drop_uid(uid, gid)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(e)}")
    dropped = _drop_capabilities(libc)
    abi = landlock_abi()
    error = ""
    skipped: tuple[str, ...] = ()
    if abi:
        try:
            skipped = _restrict_landlock(libc, abi, rules)
        except OSError as e:
            abi, error = 0, str(e)
    else:
        error = f"the kernel has no Landlock ({os.strerror(errno.ENOSYS)} or disabled)"
    return SandboxReport(os.getuid(), os.getgid(), True, dropped, abi, error, skipped)
