"""One model worker process as the daemon sees it, the requests waiting on its answers
(``worker.ModelWorker`` owns them; the worker answers in order, so they wait in a FIFO), and
the batch slots (a slot's input and output regions belong to one batch at a time)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pagent.inference import worker_wire
from p2pagent.inference.worker_failures import WorkerLost, exit_text
from p2pagent.inference.worker_wire import ChannelClosed, Region

#: The worker's own log (worker.py's): a lost worker is logged there.
log = logging.getLogger("p2pagent.inference.worker")

#: What a request's answer is handed to, once, on the loop: the reply, or why there is none.
Answer = Callable[[dict[str, Any] | None, BaseException | None], None]


@dataclass
class Pending:
    """A request sent to the worker, waiting for its answer."""

    answer: Answer
    timeout: float
    #: The batch's slot (its regions); -1 for requests that are not batches.
    slot: int = -1
    #: When it must have been answered (the loop's clock): set when the worker starts on it.
    due: float = 0.0


def future_answer(future: asyncio.Future[dict[str, Any]]) -> Answer:
    """An ``Answer`` that settles ``future`` (for requests a coroutine awaits)."""

    def answer(reply: dict[str, Any] | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(reply or {})

    return answer


@dataclass(eq=False)
class WorkerProcess:
    """One worker process and what lives and dies with it: its socket's reader on the loop
    (``on_readable``: the answers, in order), the watchdog on the request it is on, and
    ``lose``, which stops it and fails what it had; ``on_lost`` tells its owner."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    loop: asyncio.AbstractEventLoop
    on_lost: Callable[[WorkerProcess], None]
    pending: collections.deque[Pending] = field(default_factory=collections.deque)
    loaded: set[int] = field(default_factory=set)
    #: Input and output regions by slot.
    inputs: list[Region | None] = field(default_factory=lambda: [None] * worker_wire.SLOTS)
    outputs: list[Region | None] = field(default_factory=lambda: [None] * worker_wire.SLOTS)
    stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    timer: asyncio.TimerHandle | None = None  # the watchdog (``_arm``), due at ``timer_at``
    timer_at: float = 0.0
    lost: bool = False
    #: Batch answers by their bytes, decoded once: the worker sends the same bytes for every
    #: batch of one output layout, and the same decoded answer lets ``read_outputs`` reuse
    #: its checked views. Never changed once decoded (answers are only read).
    answers: dict[bytes, dict[str, Any]] = field(default_factory=dict)

    def on_readable(self) -> None:
        # One message per call (the reader is level-triggered: another one waiting calls again
        # on the loop's next turn): one answer, the common case, costs no failed read.
        if self.lost:
            return
        try:
            data, fds = worker_wire.receive_bytes(self.sock)
            reply = None if fds else self.answers.get(data)
            if reply is None:
                reply = worker_wire.decode(data, fds)
                if not fds and "outputs" in reply:  # a batch's answer: its layout's bytes
                    if len(self.answers) >= 64:
                        self.answers.clear()
                    self.answers[data] = reply
        except BlockingIOError:
            return
        except (OSError, ChannelClosed) as e:
            self.lose(self.exit_reason(e))
            return
        if not self.pending:
            for fd in fds:
                os.close(fd)
            self.lose("broke the protocol (an answer nobody asked for)")
            return
        slot = self.pending[0].slot  # the daemon's record, not the worker's word
        if "outbuf" in reply:
            if len(fds) != 1 or not isinstance(reply["outbuf"], int) or slot < 0:
                self.lose("broke the protocol (an output region without its fd)")
                return
            try:
                region = Region.adopt(fds[0], reply["outbuf"])
            except (ChannelClosed, OSError) as e:
                self.lose(f"broke the protocol ({e})")
                return
            old = self.outputs[slot]
            if old is not None:
                old.close()
            self.outputs[slot] = region
        else:
            for fd in fds:
                os.close(fd)
        done = self.pending.popleft()
        self.arm()
        done.answer(reply, None)

    def arm(self) -> None:
        """Starts the clock of the request the worker is on now (the queue's head). One
        watchdog per worker, not a timer made and cancelled per batch (issue 26)."""
        loop = self.loop
        if not self.pending:
            return
        head = self.pending[0]
        head.due = loop.time() + head.timeout
        if self.timer is not None and self.timer_at > head.due:
            self.timer.cancel()  # set for a longer timeout (the start's): too late for this one
            self.timer = None
        if self.timer is None:
            self.timer, self.timer_at = loop.call_at(head.due, self._watch), head.due

    def _watch(self) -> None:
        self.timer = None  # idle (nothing pending): the next request sets it again
        if not self.pending:
            return
        head = self.pending[0]
        if self.loop.time() < head.due:
            self.timer, self.timer_at = self.loop.call_at(head.due, self._watch), head.due
            return
        why = f"did not answer in {head.timeout:.0f}s (inference.worker_timeout_s)"
        self.lose(f"{why} and was stopped", hung=True)

    def exit_reason(self, e: BaseException) -> str:
        try:
            code = self.proc.wait(1.0)  # it closed the channel: it is exiting
        except subprocess.TimeoutExpired:
            return f"broke the protocol ({e})"
        tail = [line for line in self.stderr if line][-3:]
        words = f"; its last words: {' | '.join(tail)}" if tail else ""
        return f"exited with {exit_text(code)}{words}"

    def lose(self, why: str, *, hung: bool = False, log_it: bool = True) -> WorkerLost:
        """Stops this worker for good and fails what it had: its first request (the one it was
        on) with ``why``; the ones queued behind it never started, so they may go again."""
        if self.lost:
            return WorkerLost(why, hung=hung)
        self.lost = True
        if log_it:
            log.warning("the model worker (pid %d) %s", self.proc.pid, why)
        self.on_lost(self)
        if self.timer is not None:
            self.timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
            threading.Thread(target=self.proc.wait, name="model-worker-reap", daemon=True).start()
        for region in (*self.inputs, *self.outputs):
            if region is not None:
                region.close()
        self.inputs = [None] * worker_wire.SLOTS
        self.outputs = [None] * worker_wire.SLOTS
        error = WorkerLost(why, hung=hung)
        first = True
        while self.pending:
            p = self.pending.popleft()
            queued = WorkerLost(f"{why} (before it got to this request)", queued=True)
            p.answer(None, error if first else queued)
            first = False
        return error


class Slots:
    """The batch slots no batch holds. A batch handed over at once takes one only when
    nobody waits (``try_take``); a coroutine waits its turn (``take``)."""

    def __init__(self, count: int) -> None:
        self._free = list(range(count))
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> int | None:
        if self._free and not self._waiters:
            return self._free.pop()
        return None

    async def take(self) -> int:
        while not self._free:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the slot is the next one's
                raise
            finally:
                self._waiters.remove(waiter)
        return self._free.pop()

    def give(self, slot: int) -> None:
        self._free.append(slot)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return
