"""A daemon's scheduler inputs written to a file, read back and replayed into a fresh core.

Test-only hook: a node whose environment has ``P2PAGENT_TEST_RECORD_TASKS=DIR`` runs
:class:`FileRecordingTaskNode` as its scheduler core, which writes ``DIR/<node>.jsonl``: a
header (the core's settings and the seed of its random numbers) and then one line per input
with its arguments, what it returned, and the *views* it read while it ran (what the node
serves, whether the engine has measured batching: callables the core reads, so inputs too).
:func:`replay_file` builds a :class:`~p2pagent.tasks.core.TaskNode` from the header, feeds it
each input with its views and compares what comes out: a pure core returns the same effects.
So a real daemon driven over gRPC (``tests/cluster/test_tasks_replay.py``) replays the way the
simulator drives the core.

The file is JSON written by the node itself; decoding builds only the dataclasses named in
``_TYPES`` (nothing is unpickled). ``Task.inputs`` (opaque to the core, not compared) is left
out; result tensors are kept as their serialised bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
from collections import deque
from collections.abc import Callable, Collection
from enum import Enum
from pathlib import Path
from typing import Any

from p2pagent._proto import common_pb2
from p2pagent.membership.hints import LoadHint, QueuedWork
from p2pagent.tasks import effects
from p2pagent.tasks.config import TasksConfig
from p2pagent.tasks.core import TaskNode
from p2pagent.tasks.driver import RECORD_ENV
from p2pagent.tasks.lifecycle import TaskEvent, TaskState
from p2pagent.tasks.load import LoadReport, ModelBacklog
from p2pagent.tasks.placement import Placement, make_placement
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task
from p2pagent.testing.recording import INPUTS

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Task, TaskResult, LoadReport, ModelBacklog, LoadHint, QueuedWork, TaskEvent,
        effects.StartRun, effects.SendAssign, effects.SendSteal, effects.SendComplete,
        effects.SendReport, effects.PublishHint, effects.JournalResult, effects.DeliverResult,
        effects.TaskChanged, effects.ForgetResults,
    )
}  # fmt: skip
_ENUMS: dict[str, type[Enum]] = {TaskState.__name__: TaskState}


def encode(value: Any) -> Any:
    """``value`` as plain JSON data, tagged so that :func:`decode` rebuilds it exactly."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return {"enum": type(value).__name__, "value": value.value}
    if isinstance(value, common_pb2.Tensor):
        data = value.SerializeToString(deterministic=True)
        return {"tensor": base64.b64encode(data).decode()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _TYPES.get(name) is not type(value):
            raise TypeError(f"{name} is not a type a task log records")
        fields = {
            f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare
        }
        return {"type": name, "fields": fields}
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, frozenset | set):
        items = [encode(v) for v in value]
        return {"frozenset": sorted(items, key=lambda v: json.dumps(v, sort_keys=True))}
    if isinstance(value, list):
        return [encode(v) for v in value]
    raise TypeError(f"a task log cannot record a {type(value).__name__}")


def decode(data: Any) -> Any:
    """The value :func:`encode` made ``data`` from."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "tuple" in data:
        return tuple(decode(v) for v in data["tuple"])
    if "frozenset" in data:
        return frozenset(decode(v) for v in data["frozenset"])
    if "enum" in data:
        return _ENUMS[data["enum"]](data["value"])
    if "tensor" in data:
        return common_pb2.Tensor.FromString(base64.b64decode(data["tensor"]))
    cls = _TYPES[data["type"]]
    return cls(**{k: decode(v) for k, v in data["fields"].items()})


class FileRecordingTaskNode(TaskNode):
    """A TaskNode writing its settings, then each input call, to ``$RECORD_ENV/<name>.jsonl``."""

    def __init__(
        self,
        name: str,
        cfg: TasksConfig,
        *,
        placement: Placement,
        rng: random.Random,
        capacity: int,
        models: Callable[[], Collection[str]],
        batching_measured: Callable[[str], bool] = lambda model: True,
        full_batch_s: Callable[[str], float | None] = lambda model: None,
        speed: float = 1.0,
        stealing: bool | None = None,
    ) -> None:
        seed = rng.getrandbits(63)  # recorded: the replay draws the same numbers
        self._views: list[Any] = []
        self._depth = 0
        self._path = Path(os.environ[RECORD_ENV]) / f"{name}.jsonl"
        self._path.write_text("", encoding="utf-8")
        header = {
            "name": name, "cfg": dataclasses.asdict(cfg), "capacity": capacity, "speed": speed,
            "stealing": stealing, "seed": seed,
        }  # fmt: skip
        self._write(header)
        super().__init__(
            name, cfg, placement=placement, rng=random.Random(seed), capacity=capacity,
            models=self._view("models", lambda: list(models())),
            batching_measured=self._view("batching_measured", batching_measured),
            full_batch_s=self._view("full_batch_s", full_batch_s), speed=speed, stealing=stealing,
        )  # fmt: skip

    def _write(self, line: dict[str, Any]) -> None:
        # Opened per line: nothing to close when the node stops or is killed (test-only).
        with self._path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")

    def _view(self, name: str, read: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any) -> Any:
            value = read(*args)
            self._views.append([name, encode(args), encode(value)])
            return value

        return recorded

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name not in INPUTS:
            return attr

        def record(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            try:
                returned = attr(*args, **kwargs)
            finally:
                self._depth -= 1
            if self._depth == 0:  # an input called from another is part of that one
                views, self._views = self._views, []
                self._write({
                    "method": name, "args": encode(list(args)),
                    "kwargs": {k: encode(v) for k, v in kwargs.items()},
                    "returned": encode(returned), "views": views,
                })  # fmt: skip
            return returned

        return record


@dataclasses.dataclass(frozen=True)
class Divergence:
    """An input whose replay returned something else (both as encoded JSON data)."""

    line: int
    method: str
    recorded: Any
    replayed: Any


class ReplayDiverged(AssertionError):
    """The fresh core read a view the recorded one did not read at that point."""


def replay_file(path: Path) -> tuple[int, list[Divergence]]:
    """Feeds the inputs logged in ``path`` to a fresh core built from its header; returns how
    many inputs were replayed and each one whose result differs."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    script: deque[list[Any]] = deque()

    def view(name: str) -> Callable[..., Any]:
        def scripted(*args: Any) -> Any:
            if not script:
                raise ReplayDiverged(f"the replay read {name}{args}, the recorded run did not")
            recorded_name, recorded_args, value = script.popleft()
            if recorded_name != name or recorded_args != encode(args):
                raise ReplayDiverged(
                    f"the replay read {name}{args} where the run read {recorded_name}"
                )
            return decode(value)

        return scripted

    cfg = TasksConfig(**header["cfg"])
    core = TaskNode(
        header["name"], cfg, placement=make_placement(cfg.placement),
        rng=random.Random(header["seed"]), capacity=header["capacity"],
        models=view("models"), batching_measured=view("batching_measured"),
        full_batch_s=view("full_batch_s"), speed=header["speed"], stealing=header["stealing"],
    )  # fmt: skip
    differ: list[Divergence] = []
    for number, text in enumerate(lines[1:], start=2):
        call = json.loads(text)
        script.clear()
        script.extend(call["views"])
        method = getattr(core, call["method"])
        args = decode(call["args"])
        kwargs = {k: decode(v) for k, v in call["kwargs"].items()}
        replayed = encode(method(*args, **kwargs))
        if replayed != call["returned"] or script:
            differ.append(Divergence(number, call["method"], call["returned"], replayed))
    return len(lines) - 1, differ
