"""Replay of a real run: two daemons share a burst over gRPC while each records its scheduler
core's inputs (``P2PAGENT_TEST_RECORD_TASKS``); a fresh core fed each node's log returns the
same effects, input for input. So what the daemons ran is the pure core the simulator drives,
with nothing (clock, randomness, I/O) hidden from it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from p2pagent._proto import agent_pb2
from p2pagent.inference import demo_model, tensors
from p2pagent.tasks.driver import RECORD_ENV
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.task_log import replay_file

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0


def _methods(log: Path) -> set[str]:
    return {json.loads(line)["method"] for line in log.read_text().splitlines()[1:]}


def test_each_daemon_s_recorded_inputs_replay_to_the_same_effects(tmp_path: Path) -> None:
    busy = demo_model.write_busy(tmp_path / "models", "work", {"features": 4, "ms_per_row": 20})
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {RECORD_ENV: str(logs), "P2PAGENT_TASKS__SUBMIT_RATE_PER_IDENTITY": "1000"}
    with Cluster(tmp_path / "c", 2, use_netns=False, env=env,
                 args=["--serve", f"work={busy}"]) as c:  # fmt: skip
        c.start(wait=False)
        for d in c.nodes.values():
            d.wait_ready(timeout=SETTLE_S)  # generous: a loaded machine starts slowly
        c.wait_for(
            lambda: all(c.members(n).get(o, ("", 0))[0] == "alive"
                        for n in ("n1", "n2") for o in ("n1", "n2") if n != o),
            SETTLE_S, "both alive",
        )  # fmt: skip
        stub = c.agent("n1")
        req = agent_pb2.SubmitRequest(
            model="work", inputs=[tensors.to_proto("input", torch.zeros(1, 4))]
        )
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: stub.Submit(req, timeout=30).task_id, range(120)))
        for task_id in ids:
            wait = stub.Wait(agent_pb2.WaitRequest(task_id=task_id), timeout=120)
            events = [answer.event for answer in wait]
            assert events[-1].kind == agent_pb2.TaskEvent.KIND_DONE, events[-1]
        stolen = c.agent("n2").Status(agent_pb2.StatusRequest(), timeout=5).stolen_in
    assert stolen > 0, "n2 stole nothing: the run shows too little"
    # The thief's log holds the steal and the runs; the origin's the submissions, the
    # hand-over and the results from the thief.
    thief = {"on_hint", "on_steal_response", "on_run_finished", "tick"}
    assert thief <= _methods(logs / "n2.jsonl")
    origin = {"submit", "on_steal_request", "on_complete", "on_journaled"}
    assert origin <= _methods(logs / "n1.jsonl")
    for node in ("n1", "n2"):
        replayed, differ = replay_file(logs / f"{node}.jsonl")
        assert replayed > 100
        assert differ == [], f"{node}: {len(differ)} inputs differ, the first: {differ[0]}"
