"""A submission followed at once by its own result, in one group, is written as one row
(one INSERT instead of an INSERT and an UPDATE); any other order is left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from p2pagent._proto import peer_pb2
from p2pagent.tasks.journal import Whole, encode
from p2pagent.tasks.journal_writer import JournalTable, whole_tasks


def _s(task_id: str) -> list[Any]:
    return ["S", task_id, "m", b"spec-" + task_id.encode(), 1.0]


def _f(task_id: str) -> list[Any]:
    return ["F", task_id, b"result-" + task_id.encode(), 2.0]


def test_an_adjacent_submission_and_result_become_one_row() -> None:
    assert whole_tasks([_s("a"), _f("a")]) == [["W", "a", "m", b"spec-a", 1.0, b"result-a", 2.0]]
    purge = ["P", 0.0]
    folded = whole_tasks([_f("x"), _s("a"), _f("a"), purge, _s("b")])
    assert [f[0] for f in folded] == ["F", "W", "P", "S"]


@pytest.mark.parametrize(
    "frames",
    [
        [_s("a"), _f("b")],  # another task's result
        [_s("a"), ["P", 0.0], _f("a")],  # not adjacent: the purge stays between them
        [_f("a"), _s("a")],  # a result before its submission is not folded
        [_s("a")],
    ],
)
def test_anything_else_is_left_as_it_is(frames: list[list[Any]]) -> None:
    assert whole_tasks(frames) == frames


@pytest.mark.parametrize("alone", [True, False])
def test_the_table_reads_back_the_same_either_way(tmp_path: Path, alone: bool) -> None:
    folded, apart = JournalTable(tmp_path / "folded.db"), JournalTable(tmp_path / "apart.db")
    try:
        other = [] if alone else [_s("b")]
        folded.commit([*other, _s("a"), _f("a")])
        for frame in [*other, _s("a"), _f("a")]:
            apart.commit([frame])
        assert folded.load() == apart.load()
        assert (b"spec-a", 1.0, 2.0, b"result-a") in folded.load()
    finally:
        folded.close()
        apart.close()


def test_a_task_journaled_whole_reads_back_finished(tmp_path: Path) -> None:
    spec = peer_pb2.TaskSpec(task_id="n1-a", origin="n1", model="m")
    result = peer_pb2.CompleteRequest(task_id="n1-a", executor="n1", ok=True)
    table = JournalTable(tmp_path / "tasks.db")
    try:
        table.commit([msgpack.unpackb(encode(Whole(spec, 1.0, result, 2.0)), raw=False)])
        ((raw_spec, submitted, finished, raw_result),) = table.load()
    finally:
        table.close()
    assert peer_pb2.TaskSpec.FromString(raw_spec) == spec and (submitted, finished) == (1.0, 2.0)
    assert raw_result is not None and peer_pb2.CompleteRequest.FromString(raw_result) == result
