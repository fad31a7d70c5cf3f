"""Parameter averaging on real daemons: members of a run end a fault-free round bit-identical
at the sample-weighted mean; a member SIGKILLed mid-round does not stop the survivors; it
rejoins after a restart; client identities cannot take part; bad parts are refused.

Waits are generous upper bounds; speed targets are measured by ``bench/training.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from p2pagent._proto import agent_pb2, peer_pb2, peer_pb2_grpc
from p2pagent.identity import material as tls
from p2pagent.testing.cluster import Cluster
from p2pagent.training.api import AverageResult, average, fingerprint
from p2pagent.training.groups import group_id, group_of
from p2pagent.training.reduce import slice_bounds
from p2pagent.transport.channels import channel_options

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0
ROUND_S = 120.0
NODES = ["n1", "n2", "n3"]


def _all_alive(c: Cluster, names: list[str]) -> bool:
    return all(
        {n for n, (state, _) in c.members(o).items() if state == "alive"} >= set(names)
        for o in names
    )


def params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.standard_normal((30, 20)).astype(np.float32),
        "layer.bias": rng.standard_normal(30).astype(np.float32),
    }


def run_round(
    c: Cluster, run: str, names: list[str], seeds: dict[str, int], samples: dict[str, float]
) -> dict[str, AverageResult | BaseException]:
    out: dict[str, AverageResult | BaseException] = {}

    def one(name: str) -> None:
        try:
            out[name] = average(
                c.agent(name, name),
                run,
                params(seeds[name]),
                samples[name],
                min_members=len(names),
                timeout=ROUND_S,
            )
        except BaseException as e:  # reported by the test
            out[name] = e

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ROUND_S + 30)
    return out


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("training"), 3, use_netns=False) as c:
        c.start()
        c.wait_for(lambda: _all_alive(c, NODES), SETTLE_S, "all members alive")
        yield c


def test_a_fault_free_round_leaves_every_member_bit_identical(three: Cluster) -> None:
    seeds = {"n1": 1, "n2": 2, "n3": 3}
    samples = {"n1": 100.0, "n2": 300.0, "n3": 600.0}
    results = run_round(three, "agree", NODES, seeds, samples)
    assert all(isinstance(r, AverageResult) for r in results.values()), results
    got = {n: r for n, r in results.items() if isinstance(r, AverageResult)}
    first = got["n1"].params
    for r in got.values():
        assert r.complete and set(r.group) == set(NODES)
        for key in first:
            assert r.params[key].tobytes() == first[key].tobytes()
    for key in first:
        expected = sum(samples[n] * params(seeds[n])[key].astype(np.float64) for n in NODES)
        np.testing.assert_allclose(first[key], expected / 1000.0, rtol=1e-5, atol=1e-6)
    status = three.agent("n2").TrainStatus(agent_pb2.TrainStatusRequest(run="agree"), timeout=5)
    (run,) = status.runs
    assert run.rounds == 1 and sorted(run.members) == NODES and run.refused == 0
    assert run.bytes_sent > 0 and run.bytes_received > 0


def test_ctl_train_status_shows_the_run(three: Cluster) -> None:
    common = ["--target", three.nodes["n3"].address, "--certs", str(three.certs)]
    done = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", "train", "status", "--run", "agree",
         "--json", *common],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert run["run"] == "agree" and int(run["rounds"]) == 1
    assert sorted(run["members"]) == NODES
    table = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", "train", "status", *common],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0 and "agree" in table.stdout and "REFUSED" in table.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", "train", "status", "--run", "nope", *common],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0 and "no part in training run" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_client_identities_cannot_take_part(three: Cluster) -> None:
    with pytest.raises(grpc.RpcError) as e:
        average(three.agent("n1", "client"), "agree", params(1), 10.0, timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    m = tls.load(tls.TLSPaths.in_dir(three.certs, "client"))
    creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
    with grpc.secure_channel(
        three.nodes["n1"].address, creds, options=channel_options(m.cluster, 64 << 20)
    ) as ch:
        stub = peer_pb2_grpc.PeerServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.AverageParts(iter([peer_pb2.AveragePartsRequest(run="agree")]), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "node" in (e.value.details() or "")


def _peer_stub(
    c: Cluster, as_node: str, to: str
) -> tuple[grpc.Channel, peer_pb2_grpc.PeerServiceStub]:
    m = tls.load(tls.TLSPaths.in_dir(c.certs, as_node))
    creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
    options = channel_options(m.cluster, 64 << 20)
    ch = grpc.secure_channel(c.nodes[to].address, creds, options=options)
    return ch, peer_pb2_grpc.PeerServiceStub(ch)


def test_bad_parts_and_bad_calls_are_refused_with_a_clear_status(three: Cluster) -> None:
    # Needs the "agree" run's round 0 to have happened (the first test).
    members = sorted(NODES)
    group = group_of("n2", members, "agree", 0, 16)
    spec = fingerprint(params(1))
    index = group.index("n2")
    start, end = slice_bounds(630, len(group))[index]
    length = end - start
    base = peer_pb2.AveragePartsRequest(
        run="agree", round=0, group=group_id(group), phase=1, slice_index=index, weight=5.0,
        spec=spec, dtype="float32", length=length,
    )  # fmt: skip
    ch, stub = _peer_stub(three, "n1", "n2")
    with ch:
        cases = {
            "NaN": np.full(length, np.nan, np.float32).tobytes(),
            "shape": np.zeros(length + 1, np.float32).tobytes(),
        }
        for reason, data in cases.items():
            part = peer_pb2.AveragePartsRequest()
            part.CopyFrom(base)
            part.data = data
            if reason == "shape":
                part.length = length + 1
            with pytest.raises(grpc.RpcError) as e:
                stub.AverageParts(iter([part]), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in (e.value.details() or "")
        absurd = peer_pb2.AveragePartsRequest()
        absurd.CopyFrom(base)
        absurd.weight = 1e15
        absurd.data = np.zeros(length, np.float32).tobytes()
        with pytest.raises(grpc.RpcError) as e:
            stub.AverageParts(iter([absurd]), timeout=10)
        assert "max_sample_count" in (e.value.details() or "")
        unknown = peer_pb2.AveragePartsRequest()
        unknown.CopyFrom(base)
        unknown.run = "no-such-run"
        unknown.data = np.zeros(length, np.float32).tobytes()
        with pytest.raises(grpc.RpcError) as e:
            stub.AverageParts(iter([unknown]), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    status = three.agent("n2").TrainStatus(agent_pb2.TrainStatusRequest(run="agree"), timeout=5)
    assert status.runs[0].refused >= 3
    log = three.nodes["n2"].log_path.read_text()
    assert "refused a part from node n1" in log and "Traceback" not in log
    # The user's side: another model under the same run name, NaN parameters, absurd counts.
    n1 = three.agent("n1", "n1")
    other = {"w": np.zeros(4, np.float32)}
    with pytest.raises(grpc.RpcError) as e:
        average(n1, "agree", other, 1.0, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "new run name" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        average(n1, "nan-run", {"w": np.full(4, np.nan, np.float32)}, 1.0, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        average(n1, "agree", params(1), 1e15, timeout=10)
    assert "sample_count" in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        three.agent("n1").TrainStatus(agent_pb2.TrainStatusRequest(run="nope"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_member_killed_mid_round_does_not_stop_the_survivors_and_rejoins(
    three: Cluster,
) -> None:
    seeds = {"n1": 4, "n2": 5, "n3": 6}
    samples = dict.fromkeys(NODES, 10.0)
    first = run_round(three, "faults", NODES, seeds, samples)
    assert all(isinstance(r, AverageResult) for r in first.values()), first
    # n1 and n2 start round 1 and wait for n3's parts; n3 dies before it sends them.
    out: dict[str, AverageResult | BaseException] = {}

    def one(name: str) -> None:
        try:
            out[name] = average(
                three.agent(name, name), "faults", params(seeds[name]), 10.0, timeout=ROUND_S
            )
        except BaseException as e:
            out[name] = e

    threads = [threading.Thread(target=one, args=(n,)) for n in ("n1", "n2")]
    for t in threads:
        t.start()
    three.wait_for(
        lambda: all(
            three.agent(n)
            .TrainStatus(agent_pb2.TrainStatusRequest(run="faults"), timeout=5)
            .runs[0]
            .bytes_sent
            > 0
            and three.agent(n)
            .TrainStatus(agent_pb2.TrainStatusRequest(run="faults"), timeout=5)
            .runs[0]
            .rounds
            == 1
            for n in ("n1", "n2")
        ),
        30,
        "n1 and n2 in round 1",
    )
    three.kill("n3")
    for t in threads:
        t.join(ROUND_S + 30)
    survivors = [out[n] for n in ("n1", "n2")]
    assert all(isinstance(r, AverageResult) for r in survivors), out
    a, b = (r for r in survivors if isinstance(r, AverageResult))
    assert a.round_no == b.round_no == 1
    assert a.complete and b.complete
    for key in a.params:
        assert a.params[key].tobytes() == b.params[key].tobytes()
        np.testing.assert_allclose(
            a.params[key], (params(4)[key] + params(5)[key]) / 2, rtol=1e-5, atol=1e-6
        )
    # Restarted, n3 joins again and is back in agreement within two rounds.
    three.restart("n3")
    three.wait_for(lambda: _all_alive(three, NODES), SETTLE_S, "n3 back")
    agreed = False
    for _ in range(2):
        results = run_round(three, "faults", NODES, seeds, samples)
        got = [r for r in results.values() if isinstance(r, AverageResult)]
        assert len(got) == 3, results
        if len({r.params["layer.bias"].tobytes() for r in got}) == 1 and all(
            r.complete for r in got
        ):
            agreed = True
            break
    assert agreed
