"""Benchmarks: ``python -m bench.<name>``; their numbers go to RESULTS.md with the command.

A benchmark stopped with SIGTERM (``timeout``, a CI runner, ``kill``) unwinds as one stopped
with Ctrl-C does: the ``with`` blocks and ``finally`` clauses that own its daemons stop them,
instead of leaving them running after the benchmark is gone.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# Only where nobody chose otherwise (pytest importing a benchmark keeps its own handling).
main_thread = threading.current_thread() is threading.main_thread()
if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _interrupt)
