"""The task log of ``p2pagent/testing/task_log.py``: what it records replays to the same
effects, a changed input or view shows as a divergence, and decoding builds only the types it
knows."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from p2pagent.inference import tensors
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.driver import RECORD_ENV
from p2pagent.tasks.effects import PublishHint, SendSteal
from p2pagent.tasks.hinting import from_hint
from p2pagent.tasks.lifecycle import TaskEvent, TaskState
from p2pagent.tasks.load import LoadReport, ModelBacklog
from p2pagent.tasks.placement import make_placement
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task
from p2pagent.testing.task_log import FileRecordingTaskNode, decode, encode, replay_file

MODEL = "m"


def test_values_round_trip_exactly() -> None:
    tensor = tensors.to_proto("y", torch.ones(2, 3))
    report = LoadReport(
        "n2", 3, backlog_s=0.5, queue_len=2, running=1, capacity=32, speed=1.0,
        models=frozenset({"a", "b"}), queued=(ModelBacklog(MODEL, 2, 0.4),),
        held=frozenset({"x"}),
    )  # fmt: skip
    values = [
        Task("t1", "o", MODEL, 0.25, priority=2, deadline=1e9, attempt=1, input_bytes=16),
        TaskResult("t1", 1, "n2", True, (tensor,), compute_s=0.125),
        report,
        TaskEvent("t1", 1, TaskState.RUNNING, "n2", 0, 12.5),
        (1, [2.5, float("inf")], None, "s"),
    ]
    for value in values:
        assert decode(json.loads(json.dumps(encode(value)))) == value


def test_unknown_types_are_refused_both_ways() -> None:
    with pytest.raises(TypeError, match="cannot record"):
        encode(object())
    with pytest.raises(KeyError):
        decode({"type": "Path", "fields": {}})


def _recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> FileRecordingTaskNode:
    monkeypatch.setenv(RECORD_ENV, str(tmp_path))
    measured = iter([False, False, True, True] + [True] * 1000)
    return FileRecordingTaskNode(
        name, TasksConfig(), placement=make_placement("work_stealing"),
        rng=random.Random(5), capacity=4, models=lambda: {MODEL},
        batching_measured=lambda model: next(measured),
    )  # fmt: skip


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    o, t = _recording(tmp_path, monkeypatch, "o"), _recording(tmp_path, monkeypatch, "t")
    o.tick(0.0), t.tick(0.0)
    for i in range(20):
        o.submit(Task(f"t{i}", "o", MODEL, 0.05), 0.01)
    for e in o.tick(0.02):
        if isinstance(e, PublishHint):  # numbered as membership numbers it
            t.on_hint(from_hint(dataclasses.replace(e.hint, seq=1)), 0.02)
    steals = [e for e in t.tick(0.03) if isinstance(e, SendSteal)]
    assert steals
    granted, _ = o.on_steal_request("t", steals[0].max_tasks, steals[0].models, 1.0, 0.04)
    t.on_steal_response("o", granted, 0.05)
    return tmp_path / "t.jsonl"


def test_a_recorded_core_replays_to_the_same_effects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _run(tmp_path, monkeypatch)
    for path in (tmp_path / "o.jsonl", log):
        replayed, differ = replay_file(path)
        assert replayed >= 3 and differ == []


def test_a_changed_input_or_view_diverges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _run(tmp_path, monkeypatch)
    lines = log.read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["method"] == "on_steal_response"
    last["args"][1] = {"tuple": []}  # the victim handed over nothing
    log.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    _, differ = replay_file(log)
    assert [d.method for d in differ] == ["on_steal_response"]


def test_infers_started_at_once_are_recorded_and_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start_now`` / ``on_now_finished`` change the core (its running work): a replay
    without them would diverge at the next input."""
    o = _recording(tmp_path, monkeypatch, "o")
    o.tick(0.0)
    assert o.start_now(Task("i1", "o", MODEL, 0.05), 0.01)
    assert o.start_now(Task("i2", "o", MODEL, 0.05), 0.01)
    o.submit(Task("t1", "o", MODEL, 0.05), 0.02)  # waits behind them: run-ahead
    o.on_now_finished("i1", 0.03)  # t1 starts
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    methods = [json.loads(line).get("method") for line in lines]
    assert methods.count("start_now") == 2 and "on_now_finished" in methods
    replayed, differ = replay_file(tmp_path / "o.jsonl")
    assert replayed == 5 and differ == []
