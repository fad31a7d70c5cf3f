"""What the model worker may touch: its sandbox rules and uid, decided by the daemon.

``plan`` is computed once per node from the configuration and the paths the worker must never
reach (the node's certificate folder, key and data folder). It grants read access to what
Python and torch need (the interpreter's prefixes, the import path, system libraries, /proc,
/sys), device access to /dev, and full access to a scratch folder of its own. A root that
lies inside a protected path is left out; a root that holds one (a checkout whose import path
also holds the demo's certificates and data) is granted entry by entry, descending only into
the entries that hold a protected path, so the key never becomes readable through the import
path while the code beside it stays importable.

The uid: when the daemon runs as root, the worker switches to ``inference.worker_uid``
(auto: 65534, "nobody") if that uid can reach the interpreter and the import path; where it
cannot (Python installed under a 0700 /root, as on our CI hosts) the worker stays uid 0 with
every capability dropped, and Landlock is what keeps the key out of its reach. ``describe``
says which, for the node's start-up log.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

import p2pagent
from p2pagent.inference import sandbox
from p2pagent.inference.sandbox import Access, Rule

#: Worker uid when ``inference.worker_uid`` is auto and the daemon runs as root.
NOBODY = 65534

_SYSTEM_READ = (
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/proc", "/sys",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/hosts",
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    rules: tuple[Rule, ...]
    #: uid/gid to switch to; None to keep the daemon's (root without capabilities, or a
    #: non-root daemon's own uid).
    uid: int | None
    gid: int | None
    #: Why the uid is what it is (for the log).
    uid_reason: str
    #: Allowed roots left out because they hold (or sit inside) a protected path.
    withheld: tuple[str, ...]
    landlock_abi: int


def python_roots() -> list[str]:
    """Folders the interpreter and the import path live in (real paths, existing only)."""
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    roots.append(os.path.dirname(os.path.realpath(sys.executable)))
    roots += [p for p in sys.path if p and os.path.isabs(p)]
    roots.append(str(Path(p2pagent.__file__).resolve().parent.parent))
    out: list[str] = []
    for r in roots:
        real = os.path.realpath(r)
        if os.path.exists(real) and real not in out:
            out.append(real)
    return out


#: How deep ``_readable_parts`` descends towards a protected path before it leaves the
#: whole folder out instead.
_MAX_DEPTH = 6


def _readable_parts(
    root: Path, protected: list[Path], depth: int = 0
) -> tuple[list[str], list[str]]:
    """(readable, left out): ``root`` whole when it neither holds nor lies in a protected
    path; nothing when it lies in one; else its entries, each decided the same way (symbolic
    links by where they lead, since Landlock follows them)."""
    real = Path(os.path.realpath(root))
    if any(real == p or real.is_relative_to(p) for p in protected):
        return [], [str(root)]
    if not any(p.is_relative_to(real) for p in protected):
        return [str(real)], []
    if depth >= _MAX_DEPTH:
        return [], [str(root)]
    try:
        entries = sorted(os.listdir(real))
    except OSError:
        return [], [str(root)]
    readable: list[str] = []
    left_out: list[str] = []
    for name in entries:
        r, w = _readable_parts(real / name, protected, depth + 1)
        readable += r
        left_out += w
    return readable, left_out


def plan(worker_uid: int, protected: list[Path], scratch: Path) -> Plan:
    """The rules and uid for a worker whose scratch folder is ``scratch``."""
    guarded = [p.resolve() for p in protected]
    rules: list[Rule] = []
    withheld: list[str] = []
    for root in [*python_roots(), *_SYSTEM_READ]:
        allowed, left_out = _readable_parts(Path(root), guarded)
        rules += [Rule(a, Access.READ) for a in allowed if all(r.path != a for r in rules)]
        withheld += [w for w in left_out if w not in withheld]
    rules.append(Rule("/dev", Access.DEVICES))
    rules.append(Rule(str(scratch), Access.WRITE))
    uid, gid, reason = _choose_uid(worker_uid)
    return Plan(tuple(rules), uid, gid, reason, tuple(withheld), sandbox.landlock_abi())


def _choose_uid(worker_uid: int) -> tuple[int | None, int | None, str]:
    if os.getuid() != 0:
        return None, None, f"the daemon's own uid {os.getuid()} (it does not run as root)"
    target = NOBODY if worker_uid < 0 else worker_uid
    if target == 0:
        return None, None, "uid 0 without capabilities (inference.worker_uid = 0)"
    try:
        gid = pwd.getpwuid(target).pw_gid
    except KeyError:
        gid = target
    blocked = [r for r in python_roots() if not sandbox.path_is_reachable(r, target, gid)]
    if blocked:
        return (
            None,
            None,
            (
                f"uid 0 without capabilities: uid {target} cannot reach {blocked[0]} "
                "(the interpreter or import path); set inference.worker_uid to a uid that can"
            ),
        )
    return target, gid, f"uid {target}"


def describe(p: Plan) -> str:
    """One log line: who the worker runs as and what keeps the key from it."""
    if p.landlock_abi:
        fence = (
            f"Landlock ABI {p.landlock_abi} confines its file access (the node's key, "
            "certificates and data folder are out of reach)"
        )
        if p.landlock_abi >= 4:
            fence += " and forbids TCP"
    else:
        fence = "Landlock is not available on this kernel: only the uid separates it from the key"
    withheld = f"; left out of its reach: {', '.join(p.withheld)}" if p.withheld else ""
    return f"model worker runs as {p.uid_reason}; {fence}{withheld}"


def protects_key(p: Plan) -> bool:
    """Whether the worker is kept from the key by something (Landlock or another uid)."""
    return bool(p.landlock_abi) or p.uid is not None


#: Set (tests only), every model worker exits when asked to load a model.
EXIT_ON_LOAD_ENV = "P2PAGENT_WORKER_EXIT_ON_LOAD"

#: Environment the worker keeps from the daemon's (nothing else: no tokens, no paths).
_KEEP_ENV = (
    "PATH", "LANG", "LC_ALL", "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    EXIT_ON_LOAD_ENV,
)  # fmt: skip


def worker_environment(scratch: Path) -> dict[str, str]:
    """The worker's environment: what it needs from the daemon's, and the daemon's own
    p2pagent first on its import path. The worker runs with ``-P`` from its scratch folder, so
    without that a daemon started from a source tree (found through its working directory)
    would get a worker importing another installed copy, one its Landlock rules do not cover."""
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.update(HOME=str(scratch), TMPDIR=str(scratch), USER="p2pagent-worker")
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    ours = str(Path(p2pagent.__file__).resolve().parent.parent)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != ours]
    env["PYTHONPATH"] = os.pathsep.join([ours, *rest])
    return env
