"""Lines that native code writes to file descriptor 2, routed through ``logging``.

gRPC's C core (through absl), torch's C++ and other extensions write to fd 2 directly, not
through Python: a stranger's failed TLS handshake prints ``E1130 19:13:31.648367 29409
ssl_transport_security.cc:3238] No match found for server name: x`` with no node name, and
breaks ``--log-format json``'s one-object-per-line promise. So the daemon points fd 2 at a
pipe, a thread reads it line by line and logs each line (logger ``native``, level from absl's
first letter: E error, W warning, I debug, F critical), and Python's own ``sys.stderr`` (the
log handler, deliberate error lines) keeps writing to the real stderr.

Each source location logs at most once per ``interval`` seconds, so a port scanner cannot
flood the log. On exit fd 2 is given back and the reader drains what is left.
"""

from __future__ import annotations

import atexit
import faulthandler
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("native")

# absl: <severity><MMDD> <hh:mm:ss.micros> <thread> <file:line>] <message>
_ABSL = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\]]+)\] ?(.*)$")
_LEVELS = {"I": logging.DEBUG, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_MAX_SOURCES = 1024


class _Limiter:
    """At most one line per source per interval; bounded memory."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}

    def allow(self, source: str, now: float) -> bool:
        if now - self._last.get(source, -1e18) < self._interval:
            return False
        if len(self._last) >= _MAX_SOURCES:
            self._last.clear()
        self._last[source] = now
        return True


def parse(line: str) -> tuple[int, str, str]:
    """``(level, source, message)`` of one native line; unknown shapes are warnings."""
    m = _ABSL.match(line)
    if m is None:
        return logging.WARNING, "stderr", line
    return _LEVELS[m.group(1)], m.group(2).strip(), m.group(3)


def capture(interval: float = 1.0) -> Callable[[], None]:
    """Routes fd 2 through logging; returns the function that undoes it (also run at exit).

    Call before the log handler is created: afterwards ``sys.stderr`` is a new stream on the
    real stderr, and the handler must write to that one.
    """
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(real, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    # A hard crash kills the reader with the process: Python's fatal-error traceback goes
    # to the real stderr directly instead (a C++ abort message may still be lost).
    faulthandler.enable(file=sys.stderr)
    limiter = _Limiter(interval)
    reader = threading.Thread(target=_pump, args=(read_end, limiter), name="native-log")
    reader.daemon = True
    reader.start()
    done = False

    def restore() -> None:
        nonlocal done
        if done:
            return
        done = True
        os.dup2(real, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(timeout=2.0)

    atexit.register(restore)
    return restore


def _pump(read_end: int, limiter: _Limiter) -> None:
    with open(read_end, "rb") as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if not line:
                continue
            level, source, message = parse(line)
            if log.isEnabledFor(level) and limiter.allow(source, time.monotonic()):
                log.log(level, "%s: %s", source, message)
