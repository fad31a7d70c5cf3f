"""The journal's group commit: writes made together share one transaction, on the loop while
commits are fast and on the journal's thread once they are slow (and back when they are fast
again); a failed batch fails only its own writes; a purge never runs beside a commit; a closed
journal refuses writes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from p2pagent._proto import peer_pb2
from p2pagent.errors import Unavailable
from p2pagent.tasks.group_commit import GroupCommitJournal
from p2pagent.tasks.journal import Finished, Journal, Submitted


def _submitted(i: int) -> Submitted:
    return Submitted(peer_pb2.TaskSpec(task_id=f"n1-{i:04d}", model="m"), float(i))


class Commits:
    """Wraps the journal's commit: records each batch's size and the thread that ran it, and
    can make the disk slow."""

    def __init__(self, journal: GroupCommitJournal) -> None:
        inner = journal._journal
        assert inner is not None
        self._real = inner.commit
        self.sizes: list[int] = []
        self.threads: list[int] = []
        self.delay_s = 0.0
        self.active = 0
        self.overlapped = False
        inner.commit = self  # type: ignore[method-assign]

    def __call__(self, writes: Any) -> None:
        self.active += 1
        self.overlapped |= self.active > 1
        try:
            self.sizes.append(len(writes))
            self.threads.append(threading.get_ident())
            if self.delay_s:
                time.sleep(self.delay_s)
            self._real(writes)
        finally:
            self.active -= 1


async def _opened(
    tmp_path: Path, inline_max_s: float = 0.001
) -> tuple[GroupCommitJournal, Commits]:
    journal = GroupCommitJournal(tmp_path / "tasks.db", inline_max_s)
    await journal.open()
    return journal, Commits(journal)


async def test_writes_made_in_one_loop_iteration_share_one_commit_on_the_loop(
    tmp_path: Path,
) -> None:
    journal, commits = await _opened(tmp_path)
    futures = [journal.write(_submitted(i)) for i in range(50)]
    await asyncio.gather(*futures)
    assert commits.sizes == [50]
    assert commits.threads == [threading.get_ident()]  # the loop's own thread
    done = peer_pb2.CompleteRequest(task_id="n1-0007", ok=True)
    await journal.write(Finished("n1-0007", done, 99.0))
    await journal.close()
    rows = {r.spec.task_id: r for r in Journal(tmp_path / "tasks.db").load()}
    assert len(rows) == 50
    assert rows["n1-0007"].result == done and rows["n1-0008"].result is None


async def test_on_the_thread_writes_made_during_a_sync_share_the_next_commit(
    tmp_path: Path,
) -> None:
    journal, commits = await _opened(tmp_path, inline_max_s=0.0)  # 0: always the thread
    await asyncio.gather(*(journal.write(_submitted(i)) for i in range(50)))
    # The first write starts a commit alone; the 49 made meanwhile go in one more.
    assert commits.sizes == [1, 49]
    assert threading.get_ident() not in commits.threads
    await journal.close()
    assert len(Journal(tmp_path / "tasks.db").load()) == 50


async def test_a_slow_disk_moves_commits_off_the_loop_and_a_fast_one_brings_them_back(
    tmp_path: Path,
) -> None:
    journal, commits = await _opened(tmp_path, inline_max_s=0.005)
    loop_thread = threading.get_ident()
    commits.delay_s = 0.05  # one such commit lifts the average over 5 ms
    await journal.write(_submitted(0))
    await journal.write(_submitted(1))
    assert commits.threads == [loop_thread, commits.threads[1]]
    assert commits.threads[1] != loop_thread and not journal.timer.inline
    commits.delay_s = 0.0
    i = 2
    while not journal.timer.inline:  # fast commits on the thread pull the average down
        await journal.write(_submitted(i))
        i += 1
        assert i < 100
    await journal.write(_submitted(i))
    assert commits.threads[-1] == loop_thread
    await journal.close()
    assert len(Journal(tmp_path / "tasks.db").load()) == i + 1


@pytest.mark.parametrize("inline_max_s", [0.001, 0.0], ids=["on the loop", "on the thread"])
async def test_a_failed_commit_fails_its_writes_only(tmp_path: Path, inline_max_s: float) -> None:
    journal, _ = await _opened(tmp_path, inline_max_s)
    inner = journal._journal
    assert inner is not None
    working = inner.commit

    def full_disk(writes: Any) -> None:
        raise OSError(28, "No space left on device")

    inner.commit = full_disk  # type: ignore[method-assign]
    first = journal.write(_submitted(1))
    with pytest.raises(OSError, match="No space left"):
        await first
    inner.commit = working  # type: ignore[method-assign]  # the next batch gets a good disk
    await journal.write(_submitted(2))
    await journal.close()
    assert [r.spec.task_id for r in Journal(tmp_path / "tasks.db").load()] == ["n1-0002"]


async def test_writes_made_during_a_purge_wait_for_it_and_then_commit(tmp_path: Path) -> None:
    journal, commits = await _opened(tmp_path)
    old = peer_pb2.CompleteRequest(task_id="n1-0001", ok=True)
    await journal.write(_submitted(1))
    await journal.write(Finished("n1-0001", old, 10.0))
    inner = journal._journal
    assert inner is not None
    real_purge = inner.purge
    purging = threading.Event()

    def slow_purge(before: float) -> int:
        purging.set()
        time.sleep(0.05)
        return real_purge(before)

    inner.purge = slow_purge  # type: ignore[method-assign]
    purge = asyncio.create_task(journal.purge(20.0))
    assert await asyncio.to_thread(purging.wait, 5.0)
    written = journal.write(_submitted(2))
    await asyncio.sleep(0.01)
    assert not written.done()  # it waits: a commit beside the purge would share SQLite
    await asyncio.gather(purge, written)
    assert not commits.overlapped
    await journal.close()
    assert [r.spec.task_id for r in Journal(tmp_path / "tasks.db").load()] == ["n1-0002"]


async def test_a_closed_journal_refuses_writes(tmp_path: Path) -> None:
    journal, _ = await _opened(tmp_path)
    await journal.write(_submitted(1))
    await journal.close()
    with pytest.raises(Unavailable, match="not open"):
        journal.write(_submitted(2))


async def test_writes_not_yet_committed_when_the_journal_closes_fail(tmp_path: Path) -> None:
    journal, _ = await _opened(tmp_path)
    pending = journal.write(_submitted(1))  # its commit is scheduled for later this iteration
    await journal.close()
    with pytest.raises(Unavailable, match="stopping"):
        await pending
