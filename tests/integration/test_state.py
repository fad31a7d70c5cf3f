"""The state API against one real daemon: every CRDT type through the public RPCs, bad input,
Watch with resumption, the CLI, durability across SIGKILL, and revocation."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.testing.channels import channel
from p2pagent.testing.daemon import Daemon


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[Daemon]:
    d = Daemon("n5", certs_dir, tmp_path_factory.mktemp("state") / "n5").start()
    try:
        yield d
    finally:
        d.kill()


@pytest.fixture()
def stub(node: Daemon, certs_dir: Path) -> Iterator[agent_pb2_grpc.AgentServiceStub]:
    with channel(node.address, certs_dir) as ch:
        yield agent_pb2_grpc.AgentServiceStub(ch)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()  # type: ignore[operator]
    return e.value.code()  # type: ignore[attr-defined, no-any-return]


def test_registers_counters_and_sets_round_trip(stub: agent_pb2_grpc.AgentServiceStub) -> None:
    w = stub.Put(agent_pb2.PutRequest(namespace="t", key="reg", value=b"v1"), timeout=10)
    assert w.acked_by == 1 and w.version
    stub.Put(agent_pb2.PutRequest(namespace="t", key="reg", value=b"v2"), timeout=10)
    got = stub.Get(agent_pb2.GetRequest(namespace="t", key="reg"), timeout=10)
    assert got.found and got.type == agent_pb2.VALUE_TYPE_LWW and list(got.values) == [b"v2"]

    for d in (5, -2, 10):
        stub.Increment(agent_pb2.IncrementRequest(namespace="t", key="ctr", delta=d), timeout=10)
    got = stub.Get(agent_pb2.GetRequest(namespace="t", key="ctr"), timeout=10)
    assert got.type == agent_pb2.VALUE_TYPE_COUNTER and got.counter == 13

    stub.SetAdd(agent_pb2.SetAddRequest(namespace="t", key="s", elements=[b"b", b"a"]), timeout=10)
    stub.SetRemove(agent_pb2.SetRemoveRequest(namespace="t", key="s", elements=[b"b"]), timeout=10)
    got = stub.Get(agent_pb2.GetRequest(namespace="t", key="s"), timeout=10)
    assert got.type == agent_pb2.VALUE_TYPE_SET and list(got.elements) == [b"a"]

    stub.Delete(agent_pb2.DeleteRequest(namespace="t", key="reg"), timeout=10)
    assert not stub.Get(agent_pb2.GetRequest(namespace="t", key="reg"), timeout=10).found


def test_mv_register_keeps_siblings_a_stale_context_did_not_cover(
    stub: agent_pb2_grpc.AgentServiceStub,
) -> None:
    first = stub.Put(
        agent_pb2.PutRequest(namespace="t", key="mv", value=b"a", type=agent_pb2.VALUE_TYPE_MV),
        timeout=10,
    )
    stub.Put(
        agent_pb2.PutRequest(namespace="t", key="mv", value=b"b", type=agent_pb2.VALUE_TYPE_MV),
        timeout=10,
    )
    # A writer that only saw "a" replaces "a" but not "b": both siblings stay visible.
    stub.Put(
        agent_pb2.PutRequest(
            namespace="t", key="mv", value=b"c", type=agent_pb2.VALUE_TYPE_MV, context=first.version
        ),
        timeout=10,
    )
    got = stub.Get(agent_pb2.GetRequest(namespace="t", key="mv"), timeout=10)
    assert got.type == agent_pb2.VALUE_TYPE_MV and sorted(got.values) == [b"b", b"c"]


def test_scan_pages_through_a_prefix(stub: agent_pb2_grpc.AgentServiceStub) -> None:
    for i in range(25):
        stub.Put(agent_pb2.PutRequest(namespace="scan", key=f"job/{i:03d}", value=b"x"), timeout=10)
    stub.Put(agent_pb2.PutRequest(namespace="scan", key="other", value=b"x"), timeout=10)
    keys: list[str] = []
    token = ""
    while True:
        page = stub.Scan(
            agent_pb2.ScanRequest(namespace="scan", prefix="job/", limit=10, page_token=token),
            timeout=10,
        )
        keys += [e.key for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert keys == [f"job/{i:03d}" for i in range(25)]


def test_bad_writes_are_refused_with_the_key_named(stub: agent_pb2_grpc.AgentServiceStub) -> None:
    stub.SetAdd(agent_pb2.SetAddRequest(namespace="bad", key="aset", elements=[b"x"]), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        stub.Increment(agent_pb2.IncrementRequest(namespace="bad", key="aset", delta=1), timeout=10)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "bad/aset" in e.value.details()  # type: ignore[attr-defined]
    assert "SET" in e.value.details()  # type: ignore[attr-defined]

    huge = agent_pb2.PutRequest(namespace="bad", key="big", value=b"x" * (1 << 20))
    with pytest.raises(grpc.RpcError) as e:
        stub.Put(huge, timeout=10)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "bad/big" in e.value.details()  # type: ignore[attr-defined]

    reserved = agent_pb2.PutRequest(namespace="_revoked", key="k", value=b"x")
    assert _code(lambda: stub.Put(reserved, timeout=10)) is grpc.StatusCode.INVALID_ARGUMENT
    no_key = agent_pb2.PutRequest(namespace="bad", key="", value=b"x")
    assert _code(lambda: stub.Put(no_key, timeout=10)) is grpc.StatusCode.INVALID_ARGUMENT
    too_many = agent_pb2.PutRequest(
        namespace="bad",
        key="k",
        value=b"x",
        options=agent_pb2.WriteOptions(consistency=agent_pb2.CONSISTENCY_PEERS, acks=3),
    )
    # A single node has no peers to acknowledge: refused before anything is written.
    assert _code(lambda: stub.Put(too_many, timeout=10)) is grpc.StatusCode.FAILED_PRECONDITION
    assert not stub.Get(agent_pb2.GetRequest(namespace="bad", key="k"), timeout=10).found


def test_watch_resumes_from_a_sequence_number_without_missing_changes(
    stub: agent_pb2_grpc.AgentServiceStub,
) -> None:
    def put(key: str, value: bytes) -> None:
        stub.Put(agent_pb2.PutRequest(namespace="w", key=key, value=value), timeout=10)

    stub.Put(agent_pb2.PutRequest(namespace="pre", key="x", value=b"x"), timeout=10)
    for i in range(3):
        put(f"k{i}", b"%d" % i)
    watch = stub.Watch(agent_pb2.WatchRequest(namespace="w", from_seq=1), timeout=20)
    got: list[agent_pb2.WatchResponse] = []
    for change in watch:
        got.append(change)
        if len(got) == 3:
            break
    watch.cancel()
    assert [(c.key, c.value.values[0]) for c in got] == [("k0", b"0"), ("k1", b"1"), ("k2", b"2")]
    assert [c.seq for c in got] == sorted(c.seq for c in got)

    put("k3", b"3")  # written while no one watches: not missed on resume
    watch = stub.Watch(agent_pb2.WatchRequest(namespace="w", from_seq=got[-1].seq), timeout=20)
    assert next(watch).key == "k3"
    put("k4", b"4")  # and a change made while the stream is open arrives live
    assert next(watch).key == "k4"
    watch.cancel()

    ahead = agent_pb2.WatchRequest(namespace="w", from_seq=10**9)
    assert _code(lambda: next(stub.Watch(ahead, timeout=10))) is grpc.StatusCode.INVALID_ARGUMENT


def test_status_reports_keys_and_digest(stub: agent_pb2_grpc.AgentServiceStub) -> None:
    before = stub.Status(agent_pb2.StatusRequest(), timeout=10)
    stub.Put(agent_pb2.PutRequest(namespace="st", key="new", value=b"1"), timeout=10)
    after = stub.Status(agent_pb2.StatusRequest(), timeout=10)
    assert after.state_keys == before.state_keys + 1
    assert after.state_digest and after.state_digest != before.state_digest


def _ctl(node: Daemon, certs_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pagent.cli.ctl", *args, "--target", node.address,
         "--certs", str(certs_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cli_state_commands(node: Daemon, certs_dir: Path) -> None:
    r = _ctl(node, certs_dir, "state", "put", "--ns", "cli", "greeting", "hello", "--durable")
    assert r.returncode == 0, r.stderr
    r = _ctl(node, certs_dir, "state", "incr", "--ns", "cli", "hits", "7", "--json")
    assert r.returncode == 0, r.stderr
    r = _ctl(node, certs_dir, "state", "get", "--ns", "cli", "greeting", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["value"] == "hello" and doc["type"] == "lww"
    r = _ctl(node, certs_dir, "state", "scan", "--ns", "cli", "--json")
    assert r.returncode == 0, r.stderr
    assert {e["key"] for e in json.loads(r.stdout)} == {"greeting", "hits"}
    r = _ctl(node, certs_dir, "state", "incr", "--ns", "cli", "greeting")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "cli/greeting" in r.stderr


def test_durable_writes_survive_sigkill(tmp_path: Path, certs_dir: Path) -> None:
    d = Daemon("n6", certs_dir, tmp_path / "n6").start()
    try:
        with channel(d.address, certs_dir) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            durable = agent_pb2.WriteOptions(durable=True)
            for i in range(50):
                stub.Put(
                    agent_pb2.PutRequest(namespace="d", key=f"k{i}", value=b"%d" % i,
                                         options=durable),
                    timeout=10,
                )  # fmt: skip
                stub.Increment(
                    agent_pb2.IncrementRequest(namespace="d", key="n", delta=1, options=durable),
                    timeout=10,
                )
        d.kill()  # SIGKILL: no clean shutdown, no final flush
        d.start()
        with channel(d.address, certs_dir) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            for i in range(50):
                got = stub.Get(agent_pb2.GetRequest(namespace="d", key=f"k{i}"), timeout=10)
                assert list(got.values) == [b"%d" % i]
            assert stub.Get(agent_pb2.GetRequest(namespace="d", key="n"), timeout=10).counter == 50
            # The restarted node writes under a new epoch: its counter keeps adding up.
            stub.Increment(agent_pb2.IncrementRequest(namespace="d", key="n", delta=1), timeout=10)
            assert stub.Get(agent_pb2.GetRequest(namespace="d", key="n"), timeout=10).counter == 51
    finally:
        d.kill()


def test_revocation_is_enforced_and_survives_restart(tmp_path: Path, certs_dir: Path) -> None:
    from p2pagent.identity import certs
    from p2pagent.identity.spiffe import Role

    if not (certs_dir / "client3.crt").exists():
        certs.issue(certs_dir, "client3", Role.CLIENT)
    d = Daemon("n7", certs_dir, tmp_path / "n7").start()
    try:
        with channel(d.address, certs_dir, "client3") as ch:
            victim = agent_pb2_grpc.AgentServiceStub(ch)
            me = victim.Status(agent_pb2.StatusRequest(), timeout=10)
            cluster = me.identity.split("/")[2]
            target = f"spiffe://{cluster}/client/client3"
            # A client may not revoke anyone.
            req = agent_pb2.RevokeRequest(identity=target, reason="stolen laptop")
            assert (
                _code(lambda: victim.Revoke(req, timeout=10)) is grpc.StatusCode.PERMISSION_DENIED
            )
        with channel(d.address, certs_dir, "admin") as ch:  # an operator with an admin identity
            admin = agent_pb2_grpc.AgentServiceStub(ch)
            bad = agent_pb2.RevokeRequest(identity="not-a-uri")
            assert _code(lambda: admin.Revoke(bad, timeout=10)) is grpc.StatusCode.INVALID_ARGUMENT
        r = _ctl(d, certs_dir, "revoke", target, "--reason", "stolen laptop", "--identity", "admin")
        assert r.returncode == 0, r.stderr
        with channel(d.address, certs_dir, "client3") as ch:
            code = _code(lambda: agent_pb2_grpc.AgentServiceStub(ch).Status(
                agent_pb2.StatusRequest(), timeout=10))  # fmt: skip
            assert code is grpc.StatusCode.PERMISSION_DENIED
        d.kill()
        d.start()
        with channel(d.address, certs_dir, "client3") as ch:
            code = _code(lambda: agent_pb2_grpc.AgentServiceStub(ch).Status(
                agent_pb2.StatusRequest(), timeout=10))  # fmt: skip
            assert code is grpc.StatusCode.PERMISSION_DENIED
        with channel(d.address, certs_dir) as ch:  # everyone else is still served
            assert (
                agent_pb2_grpc.AgentServiceStub(ch)
                .Status(agent_pb2.StatusRequest(), timeout=10)
                .name
            )
    finally:
        d.kill()
