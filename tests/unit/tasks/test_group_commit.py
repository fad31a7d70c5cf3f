"""The journal's group commit: writes made while a batch syncs share the next transaction, a
failed batch fails only its own writes, and a closed journal refuses writes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from p2pagent._proto import peer_pb2
from p2pagent.errors import Unavailable
from p2pagent.tasks.group_commit import GroupCommitJournal
from p2pagent.tasks.journal import Finished, Journal, Submitted


def _submitted(i: int) -> Submitted:
    return Submitted(peer_pb2.TaskSpec(task_id=f"n1-{i:04d}", model="m"), float(i))


async def _opened(tmp_path: Path) -> tuple[GroupCommitJournal, list[int]]:
    journal = GroupCommitJournal(tmp_path / "tasks.db")
    await journal.open()
    inner = journal._journal
    assert inner is not None
    sizes: list[int] = []
    real = inner.commit

    def counting(writes: Any) -> None:
        sizes.append(len(writes))
        real(writes)

    inner.commit = counting  # type: ignore[method-assign]
    return journal, sizes


async def test_writes_made_during_a_sync_share_the_next_commit(tmp_path: Path) -> None:
    journal, sizes = await _opened(tmp_path)
    futures = [journal.write(_submitted(i)) for i in range(50)]
    await asyncio.gather(*futures)
    # The first write starts a commit alone; the 49 made meanwhile go in one more.
    assert sizes == [1, 49]
    done = peer_pb2.CompleteRequest(task_id="n1-0007", ok=True)
    await journal.write(Finished("n1-0007", done, 99.0))
    await journal.close()
    rows = {r.spec.task_id: r for r in Journal(tmp_path / "tasks.db").load()}
    assert len(rows) == 50
    assert rows["n1-0007"].result == done and rows["n1-0008"].result is None


async def test_a_failed_commit_fails_its_writes_only(tmp_path: Path) -> None:
    journal, sizes = await _opened(tmp_path)
    inner = journal._journal
    assert inner is not None
    working = inner.commit

    def full_disk(writes: Any) -> None:
        sizes.append(len(writes))
        raise OSError(28, "No space left on device")

    inner.commit = full_disk  # type: ignore[method-assign]
    first = journal.write(_submitted(1))
    inner.commit = working  # type: ignore[method-assign]  # the next batch gets a good disk
    second = journal.write(_submitted(2))
    with pytest.raises(OSError, match="No space left"):
        await first
    await second
    await journal.close()
    assert [r.spec.task_id for r in Journal(tmp_path / "tasks.db").load()] == ["n1-0002"]


async def test_a_closed_journal_refuses_writes(tmp_path: Path) -> None:
    journal, _ = await _opened(tmp_path)
    await journal.write(_submitted(1))
    await journal.close()
    with pytest.raises(Unavailable, match="not open"):
        journal.write(_submitted(2))
