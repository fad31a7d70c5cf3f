"""The task journal and its writer process: writes made while a group syncs share the next
commit, a failed group fails its own writes only, the writer's death fails what it had not
confirmed and it comes back, closing commits what was sent, and a daemon that dies leaves no
writer behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import uvloop

from p2pagent._proto import peer_pb2
from p2pagent.errors import Unavailable
from p2pagent.tasks.journal import Finished, Submitted, TaskJournal, read_rows
from p2pagent.tasks.journal_writer import JournalTable, serve


def _submitted(i: int) -> Submitted:
    return Submitted(peer_pb2.TaskSpec(task_id=f"n1-{i:04d}", model="m"), float(i))


def _done(i: int, finished: float) -> Finished:
    task_id = f"n1-{i:04d}"
    return Finished(task_id, peer_pb2.CompleteRequest(task_id=task_id, ok=True), finished)


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _on_uvloop(scenario: Callable[[Path], Awaitable[None]], tmp_path: Path) -> None:
    """Runs ``scenario`` on a uvloop loop (the daemon's), in a thread of its own."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            uvloop.run(scenario(tmp_path))
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the uvloop scenario did not finish"
    if errors:
        raise errors[0]


async def _group_commit(tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path / "tasks.db")
    assert await journal.open() == []
    before = journal.groups_committed
    await asyncio.gather(*[journal.write(_submitted(i)) for i in range(50)])
    # Sent in one go: the writer finds them in the pipe a few at most at a time (the first
    # may go alone while the rest are still being written), not one fsync each.
    assert 1 <= journal.groups_committed - before <= 5
    await journal.write(_done(7, 99.0))
    await journal.close()
    rows = {r.spec.task_id: r for r in read_rows(tmp_path / "tasks.db")}
    assert len(rows) == 50
    assert rows["n1-0007"].result == _done(7, 99.0).result and rows["n1-0007"].finished == 99.0
    assert rows["n1-0008"].result is None


async def test_writes_made_during_a_sync_share_a_group_and_are_read_back(tmp_path: Path) -> None:
    await _group_commit(tmp_path)


def test_the_same_on_uvloop(tmp_path: Path) -> None:
    _on_uvloop(_group_commit, tmp_path)


async def test_a_reopened_journal_returns_its_rows_oldest_first(tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path / "tasks.db")
    await journal.open()
    for i in (3, 1, 2):
        await journal.write(_submitted(i))
    await journal.close()
    again = TaskJournal(tmp_path / "tasks.db")
    rows = await again.open()
    assert [r.spec.task_id for r in rows] == ["n1-0001", "n1-0002", "n1-0003"]
    await again.close()


def test_a_failed_group_fails_its_writes_only(tmp_path: Path) -> None:
    """The writer's side: a commit that raises (a full disk) is answered with the error and
    rolled back; the next group commits."""
    disk_full = True

    def writer_process(frames_in: int, replies_out: int) -> None:
        table = JournalTable(tmp_path / "tasks.db")  # SQLite: used by the thread that made it
        working = table.commit

        def commit(frames: Any) -> None:
            if disk_full:
                raise OSError(28, "No space left on device")
            working(frames)

        table.commit = commit  # type: ignore[method-assign]
        try:
            serve(table, frames_in, replies_out)
        finally:
            table.close()

    frames_r, frames_w = os.pipe()
    replies_r, replies_w = os.pipe()
    writer = threading.Thread(target=writer_process, args=(frames_r, replies_w), daemon=True)
    writer.start()
    replies = msgpack.Unpacker(raw=False)

    def roundtrip(frame: list[Any]) -> list[Any]:
        os.write(frames_w, msgpack.packb(frame))
        while True:
            for reply in replies:
                return list(reply)
            replies.feed(os.read(replies_r, 1 << 16))

    try:
        spec = peer_pb2.TaskSpec(task_id="a", model="m").SerializeToString()
        count, error = roundtrip(["S", "a", "m", spec, 1.0])
        assert count == 1 and "No space left on device" in error
        disk_full = False
        spec = peer_pb2.TaskSpec(task_id="b", model="m").SerializeToString()
        assert roundtrip(["S", "b", "m", spec, 2.0]) == [1, None]
    finally:
        os.close(frames_w)  # the end of the input stops the writer
        writer.join(10)
        for fd in (frames_r, replies_r, replies_w):
            os.close(fd)
    assert not writer.is_alive()
    table = JournalTable(tmp_path / "tasks.db")
    assert [spec for spec, *_ in table.load()] == [spec]
    table.close()


async def test_an_error_answer_fails_that_group_s_futures_with_its_message(
    tmp_path: Path,
) -> None:
    journal = TaskJournal(tmp_path / "tasks.db")
    await journal.open()
    writer = journal._writer
    assert writer is not None
    os.kill(writer.process.pid, signal.SIGSTOP)  # so that it answers nothing itself
    try:
        first, second, third = (journal.write(_submitted(i)) for i in range(3))
        # As if the writer had answered: two frames failed together, then one committed.
        writer.replies_received(msgpack.packb([2, "OSError: [Errno 28] disk full"]))
        writer.replies_received(msgpack.packb([1, None]))
        for f in (first, second):
            with pytest.raises(OSError, match=r"could not commit: OSError: .*disk full"):
                await f
        await third
    finally:
        os.kill(writer.process.pid, signal.SIGKILL)
        await journal.close()


async def _stopped_after_one_write(tmp_path: Path, first: int) -> tuple[TaskJournal, int]:
    """An open journal that confirmed ``_submitted(first)``, its writer then SIGSTOPped so
    that it confirms nothing more; returns the journal and the writer's pid."""
    journal = TaskJournal(tmp_path / "tasks.db")
    await journal.open()
    await journal.write(_submitted(first))
    pid = journal.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    return journal, pid


async def _death_and_restart(tmp_path: Path) -> None:
    journal, pid = await _stopped_after_one_write(tmp_path, 0)
    pending = [journal.write(_submitted(i)) for i in range(1, 4)]
    os.kill(pid, signal.SIGKILL)
    for f in pending:
        with pytest.raises(Unavailable, match="stopped before it confirmed this write"):
            await f
    # While it is down, writes fail at once rather than wait.
    if journal.writer_pid is None:
        with pytest.raises(Unavailable, match="being restarted"):
            journal.write(_submitted(9))
    await _until(lambda: journal.writer_pid not in (None, pid), "the writer to be restarted")
    assert journal.restarts == 1
    await journal.write(_submitted(4))
    await journal.close()
    ids = {r.spec.task_id for r in read_rows(tmp_path / "tasks.db")}
    assert {"n1-0000", "n1-0004"} <= ids  # what was confirmed is there


async def test_the_writer_s_death_fails_what_it_had_not_confirmed_and_it_comes_back(
    tmp_path: Path,
) -> None:
    await _death_and_restart(tmp_path)


def test_the_same_on_uvloop_too(tmp_path: Path) -> None:
    _on_uvloop(_death_and_restart, tmp_path)


COUNT_FORKS = """
import ctypes, sys
from pathlib import Path
import uvloop
from p2pagent.tasks.journal import TaskJournal

forks = 0

@ctypes.CFUNCTYPE(None)
def prepare():
    global forks
    forks += 1

assert ctypes.CDLL(None).__register_atfork(prepare, None, None, None) == 0

async def main():
    journal = TaskJournal(Path(sys.argv[1]))
    await journal.open()
    await journal.close()

uvloop.run(main())
print(forks)
"""


def test_starting_the_writer_runs_no_fork_handlers(tmp_path: Path) -> None:
    """uvloop's own ``subprocess_exec`` forks, which runs gRPC's fork handlers: with gRPC's
    threads busy, the child then crashed (SIGSEGV) or hung before its exec, about once in 200
    starts. The writer is started from a vfork instead, which runs no fork handler."""
    out = subprocess.run(
        [sys.executable, "-c", COUNT_FORKS, str(tmp_path / "tasks.db")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["0"], out.stderr


async def test_a_submission_the_dead_writer_never_confirmed_is_deleted_by_the_next(
    tmp_path: Path,
) -> None:
    """The caller was told the submission was refused; if the row reached the table anyway
    (committed, then the writer died before its ack), it must not come back at a restart."""
    journal, pid = await _stopped_after_one_write(tmp_path, 1)
    unconfirmed = journal.write(_submitted(2))
    # As if the writer had committed it and died before answering:
    table = JournalTable(tmp_path / "tasks.db")
    spec = _submitted(2).spec
    table.commit([["S", spec.task_id, "m", spec.SerializeToString(), 2.0]])
    table.close()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Unavailable):
        await unconfirmed
    assert journal.unconfirmed_submissions == {"n1-0002"}
    await _until(lambda: not journal.unconfirmed_submissions, "the next writer to delete it")
    await journal.write(_submitted(3))
    await journal.close()
    assert [r.spec.task_id for r in read_rows(tmp_path / "tasks.db")] == ["n1-0001", "n1-0003"]


async def test_closing_commits_what_was_sent_and_refuses_later_writes(tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path / "tasks.db")
    await journal.open()
    pid = journal.writer_pid
    sent = [journal.write(_submitted(i)) for i in range(20)]
    await journal.close()
    assert all(f.done() and f.exception() is None for f in sent)
    with pytest.raises(Unavailable, match="closed"):
        journal.write(_submitted(99))
    assert pid is not None and not _alive(pid)
    assert len(read_rows(tmp_path / "tasks.db")) == 20


async def test_closing_while_the_writer_waits_to_be_restarted_is_prompt(tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path / "tasks.db")
    await journal.open()
    pids = []
    for _ in range(2):  # the second death within seconds is restarted after a backoff
        await _until(lambda: journal.writer_pid not in (None, *pids), "a running writer")
        pid = journal.writer_pid
        assert pid is not None
        pids.append(pid)
        os.kill(pid, signal.SIGKILL)
    await _until(lambda: journal.writer_pid is None, "the second death to be seen")
    started = time.monotonic()
    await journal.close()
    assert time.monotonic() - started < 5.0  # well under tasks.journal_close_timeout_s (10 s)
    await asyncio.sleep(1.0)  # past the backoff: no writer was started after all
    assert journal.restarts == 1 and journal.writer_pid is None
    assert not any(_alive(pid) for pid in pids)


async def test_purge_forgets_results_delivered_before_a_time(tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path / "tasks.db")
    await journal.open()
    for i in range(4):
        journal.write(_submitted(i))
    journal.write(_done(0, 10.0))
    journal.write(_done(1, 20.0))
    await journal.purge(15.0)
    await journal.close()
    assert [r.spec.task_id for r in read_rows(tmp_path / "tasks.db")] == [
        "n1-0001",
        "n1-0002",
        "n1-0003",
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose; only its parent can reap it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


OWNER = """
import asyncio, sys
from pathlib import Path
from p2pagent.tasks.journal import TaskJournal

async def main():
    journal = TaskJournal(Path(sys.argv[1]))
    await journal.open()
    print(journal.writer_pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_daemon_killed_outright_leaves_no_writer_behind(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "tasks.db")], stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert _alive(pid)
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "the writer outlived the daemon that started it"
    finally:
        owner.kill()
        owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()
