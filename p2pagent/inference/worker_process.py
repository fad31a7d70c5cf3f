"""One model worker process as the daemon sees it, and the requests waiting on its answers
(``worker.ModelWorker`` owns them; the worker answers in order, so they wait in a FIFO)."""

from __future__ import annotations

import asyncio
import collections
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any

from p2pagent.inference import worker_wire
from p2pagent.inference.worker_wire import Region


@dataclass
class Pending:
    """A request sent to the worker, waiting for its answer."""

    doing: str
    future: asyncio.Future[dict[str, Any]]
    timeout: float
    #: The batch's slot (its regions); -1 for requests that are not batches.
    slot: int = -1
    #: When it must have been answered (the loop's clock): set when the worker starts on it.
    due: float = 0.0


@dataclass(eq=False)
class WorkerProcess:
    """One worker process and what lives and dies with it."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    pending: collections.deque[Pending] = field(default_factory=collections.deque)
    loaded: set[int] = field(default_factory=set)
    #: Input and output regions by slot.
    inputs: list[Region | None] = field(default_factory=lambda: [None] * worker_wire.SLOTS)
    outputs: list[Region | None] = field(default_factory=lambda: [None] * worker_wire.SLOTS)
    stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    timer: asyncio.TimerHandle | None = None  # the watchdog (``_arm``), due at ``timer_at``
    timer_at: float = 0.0
    lost: bool = False
