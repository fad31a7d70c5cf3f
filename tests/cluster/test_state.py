"""Replicated state with real daemons: a write on one node is read on the others, counters
from every node add up exactly, acknowledged writes are on peers, a restarted node catches up,
and two halves of a partition that both kept writing converge to identical replicas.

Waits are generous upper bounds; speed targets are measured by ``bench/state_cluster.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.testing import netns
from p2pagent.testing.cluster import Cluster

pytestmark = pytest.mark.cluster
SETTLE_S = 60.0


def _get(c: Cluster, node: str, ns: str, key: str) -> agent_pb2.GetResponse:
    return c.agent(node).Get(agent_pb2.GetRequest(namespace=ns, key=key), timeout=5)


def _digests(c: Cluster, names: list[str]) -> set[str]:
    out = set()
    for n in names:
        try:
            out.add(c.agent(n).Status(agent_pb2.StatusRequest(), timeout=5).state_digest)
        except grpc.RpcError:
            out.add(f"unreachable {n}")
    return out


def _all_alive(c: Cluster, names: list[str]) -> bool:
    return all(
        {n for n, (state, _) in c.members(o).items() if state == "alive"} >= set(names)
        for o in names
    )


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("state"), 3, use_netns=False) as c:
        c.start()
        names = list(c.nodes)
        c.wait_for(lambda: _all_alive(c, names), SETTLE_S, "all members alive")
        yield c


def test_a_write_on_one_node_is_read_on_every_other(three: Cluster) -> None:
    three.agent("n1").Put(agent_pb2.PutRequest(namespace="a", key="k", value=b"v"), timeout=5)
    for n in ("n2", "n3"):
        three.wait_for(lambda n=n: _get(three, n, "a", "k").values == [b"v"], SETTLE_S, f"k on {n}")


def test_counters_from_every_node_add_up_exactly(three: Cluster) -> None:
    names = list(three.nodes)
    per_node = 25

    def bump(node: str) -> None:
        for _ in range(per_node):
            req = agent_pb2.IncrementRequest(namespace="a", key="hits", delta=2)
            three.agent(node).Increment(req, timeout=10)

    threads = [threading.Thread(target=bump, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = 2 * per_node * len(names)
    for n in names:
        three.wait_for(
            lambda n=n: _get(three, n, "a", "hits").counter == total, SETTLE_S, f"total on {n}"
        )


def test_a_majority_write_is_on_a_peer_when_acknowledged(three: Cluster) -> None:
    for i in range(10):
        opts = agent_pb2.WriteOptions(consistency=agent_pb2.CONSISTENCY_MAJORITY, durable=True)
        req = agent_pb2.PutRequest(namespace="m", key=f"k{i}", value=b"x", options=opts)
        resp = three.agent("n1").Put(req, timeout=10)
        assert resp.acked_by >= 2
        # Read at once, no waiting: at least one peer already holds it.
        holders = [n for n in ("n2", "n3") if _get(three, n, "m", f"k{i}").found]
        assert holders, f"k{i} acknowledged by a majority but on no peer"


def test_a_restarted_node_catches_up_on_what_it_missed(three: Cluster) -> None:
    three.kill("n3")
    stub = three.agent("n1")
    for i in range(300):
        stub.Put(agent_pb2.PutRequest(namespace="late", key=f"k{i:04d}", value=b"%d" % i),
                 timeout=10)  # fmt: skip
    three.restart("n3")
    names = list(three.nodes)
    three.wait_for(lambda: len(_digests(three, names)) == 1, SETTLE_S, "identical replicas")
    assert _get(three, "n3", "late", "k0299").values == [b"299"]


@pytest.mark.skipif(not netns.available(), reason="partitions need root and ip netns")
def test_both_halves_of_a_partition_write_and_converge(tmp_path: Path) -> None:
    with Cluster(tmp_path, 4, use_netns=True) as c:
        c.start()
        names = list(c.nodes)
        left, right = names[:2], names[2:]
        c.wait_for(lambda: _all_alive(c, names), SETTLE_S, "all alive before the partition")
        c.agent("n1").SetAdd(
            agent_pb2.SetAddRequest(namespace="p", key="set", elements=[b"x", b"y"]), timeout=5
        )
        c.wait_for(lambda: _get(c, "n4", "p", "set").elements == [b"x", b"y"], SETTLE_S, "set")
        c.partition(left, right)
        for side, node in (("L", "n1"), ("R", "n3")):
            stub = c.agent(node)
            stub.Put(agent_pb2.PutRequest(namespace="p", key="mv", value=side.encode(),
                                          type=agent_pb2.VALUE_TYPE_MV), timeout=5)  # fmt: skip
            stub.Put(agent_pb2.PutRequest(namespace="p", key=f"only{side}", value=b"1"), timeout=5)
            for _ in range(5):
                stub.Increment(agent_pb2.IncrementRequest(namespace="p", key="n", delta=1),
                               timeout=5)  # fmt: skip
        # Add-wins: the left removes x while the right adds it again; x survives.
        c.agent("n2").SetRemove(
            agent_pb2.SetRemoveRequest(namespace="p", key="set", elements=[b"x", b"y"]), timeout=5
        )
        c.agent("n4").SetAdd(agent_pb2.SetAddRequest(namespace="p", key="set", elements=[b"x"]),
                             timeout=5)  # fmt: skip
        c.heal()
        c.wait_for(lambda: len(_digests(c, names)) == 1, SETTLE_S, "identical replicas")
        for n in names:
            assert sorted(_get(c, n, "p", "mv").values) == [b"L", b"R"]  # siblings kept
            assert _get(c, n, "p", "n").counter == 10
            assert _get(c, n, "p", "set").elements == [b"x"]
            assert _get(c, n, "p", "onlyL").found and _get(c, n, "p", "onlyR").found


def test_a_revocation_spreads_to_every_node(three: Cluster) -> None:
    from p2pagent.identity import certs
    from p2pagent.identity import material as tls
    from p2pagent.identity.spiffe import Role
    from p2pagent.transport.channels import channel_options

    certs.issue(three.certs, "mallory", Role.CLIENT)
    m = tls.load(tls.TLSPaths.in_dir(three.certs, "mallory"))
    creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)

    def refused(node: str) -> bool:
        opts = channel_options(m.cluster, 4 << 20)
        with grpc.secure_channel(three.nodes[node].address, creds, options=opts) as ch:
            try:
                agent_pb2_grpc.AgentServiceStub(ch).Status(agent_pb2.StatusRequest(), timeout=5)
            except grpc.RpcError as e:
                return e.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined, no-any-return]
            return False

    assert not refused("n2")
    three.agent("n1", "admin").Revoke(
        agent_pb2.RevokeRequest(identity=m.identity.uri, reason="test"), timeout=10
    )
    for n in three.nodes:
        three.wait_for(lambda n=n: refused(n), SETTLE_S, f"{n} refuses the revoked identity")


def test_a_revocation_ends_the_identitys_open_watch_on_every_node(three: Cluster) -> None:
    """Revocation stops more than new calls: a Watch already open on each node is ended with
    PERMISSION_DENIED once the revocation reaches that node."""
    import time

    from p2pagent.identity import certs
    from p2pagent.identity.spiffe import Role

    certs.issue(three.certs, "eve", Role.CLIENT)
    ended: dict[str, tuple[grpc.StatusCode, str, float]] = {}
    opened = threading.Barrier(len(three.nodes) + 1)

    def watch(node: str) -> None:
        stub = three.agent(node, "eve")
        call = stub.Watch(agent_pb2.WatchRequest(namespace="revoke-watch"), timeout=120)
        three.agent(node, "eve").Status(agent_pb2.StatusRequest(), timeout=10)
        opened.wait(30)
        try:
            for _ in call:
                pass
        except grpc.RpcError as e:
            ended[node] = (e.code(), e.details(), time.monotonic())  # type: ignore[attr-defined]

    threads = [threading.Thread(target=watch, args=(n,)) for n in three.nodes]
    for t in threads:
        t.start()
    opened.wait(30)
    time.sleep(1.0)  # every Watch is registered on its node
    three.agent("n2").Put(
        agent_pb2.PutRequest(namespace="revoke-watch", key="k", value=b"v"), timeout=10
    )
    assert not ended  # the streams are open and served
    eve = f"spiffe://{three.cluster}/client/eve"
    three.agent("n1", "admin").Revoke(
        agent_pb2.RevokeRequest(identity=eve, reason="left the company"), timeout=10
    )
    acked = time.monotonic()
    for t in threads:
        t.join(SETTLE_S)
    assert set(ended) == set(three.nodes), f"still open on {set(three.nodes) - set(ended)}"
    for node, (code, details, at) in ended.items():
        assert code is grpc.StatusCode.PERMISSION_DENIED, (node, details)
        assert "revoked: left the company" in details
        assert at - acked < SETTLE_S  # generous: bench/streams.py measures the 2 s target
