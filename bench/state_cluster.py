"""Replicated state with real daemons against the issue's targets.

``python -m bench.state_cluster [--nodes 16] [--writes 200] [--keys 100000] [--partition-nodes 6]``

* visibility: a ``Put`` on a random node, until every other node's ``Watch`` stream shows it
  (p50 / p99 over every (write, node) pair; target p99 < 1 s);
* memory: one daemon holding ``--keys`` small keys, its RSS (target < 200 MB), and a fresh node
  joining it: seconds until its replica is identical;
* partition: with network namespaces, two halves write while cut off; seconds from reconnecting
  until every replica has the same digest, and the same counted from the moment membership
  sees everyone alive again (target: within two anti-entropy intervals).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench._proc import NO_RATE_LIMIT
from bench._targets import Target, at_most, report
from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.identity import material as tls
from p2pagent.state.config import StateConfig
from p2pagent.testing import netns
from p2pagent.testing.cluster import Cluster
from p2pagent.transport.channels import channel_options

LIMIT_S = 180.0


def _digests(c: Cluster, names: list[str]) -> set[str]:
    out = set()
    for n in names:
        try:
            out.add(c.agent(n).Status(agent_pb2.StatusRequest(), timeout=10).state_digest)
        except grpc.RpcError:
            out.add("?" + n)
    return out


def _digest_by_node(c: Cluster, names: list[str]) -> dict[str, str]:
    return {
        n: c.agent(n).Status(agent_pb2.StatusRequest(), timeout=10).state_digest[:12] for n in names
    }


def _counters(c: Cluster, names: list[str]) -> dict[str, int]:
    request = agent_pb2.GetRequest(namespace="p", key="n")
    return {n: c.agent(n).Get(request, timeout=10).counter for n in names}


def _all_alive(c: Cluster, names: list[str]) -> bool:
    return all(
        {n for n, (s, _) in c.members(o).items() if s == "alive"} >= set(names) for o in names
    )


def visibility(nodes: int, writes: int) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster(Path(tmp), nodes, use_netns=False, env=NO_RATE_LIMIT) as c,
    ):
        names = list(c.nodes)
        c.start()
        c.wait_for(lambda: _all_alive(c, names), LIMIT_S, "all alive")
        written: dict[str, float] = {}
        seen: list[float] = []
        lock = threading.Lock()
        done = threading.Event()
        streams = []

        def watch(node: str) -> None:
            stream = c.agent(node).Watch(agent_pb2.WatchRequest(namespace="vis"))
            streams.append(stream)
            try:
                for change in stream:
                    now = time.monotonic()
                    with lock:
                        if change.key in written and not change.key.endswith("@" + node):
                            seen.append(now - written[change.key])
            except grpc.RpcError:
                pass

        threads = [threading.Thread(target=watch, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        time.sleep(2.0)  # let every Watch subscribe
        rng = random.Random(1)
        for i in range(writes):
            node = rng.choice(names)
            key = f"k{i}@{node}"
            with lock:
                written[key] = time.monotonic()
            c.agent(node).Put(agent_pb2.PutRequest(namespace="vis", key=key, value=b"v"),
                              timeout=10)  # fmt: skip
            time.sleep(0.02)
        expected = writes * (nodes - 1)
        deadline = time.monotonic() + 30
        while len(seen) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        done.set()
        for s in streams:
            s.cancel()
        lat = sorted(seen)
        return {
            "samples": len(lat),
            "expected": expected,
            "p50_s": round(statistics.median(lat), 4),
            "p99_s": round(lat[int(0.99 * (len(lat) - 1))], 4),
            "max_s": round(lat[-1], 4),
        }


async def _fill(address: str, certs: Path, keys: int) -> None:
    m = tls.load(tls.TLSPaths.in_dir(certs, "client"))
    creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
    async with grpc.aio.secure_channel(
        address, creds, options=channel_options("test", 8 << 20)
    ) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        sem = asyncio.Semaphore(64)

        async def put(i: int) -> None:
            async with sem:
                req = agent_pb2.PutRequest(namespace="mem", key=f"key-{i:07d}", value=b"v%07d" % i)
                await stub.Put(req, timeout=60)

        for start in range(0, keys, 5000):
            await asyncio.gather(*(put(i) for i in range(start, min(keys, start + 5000))))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_and_catch_up(keys: int) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster(Path(tmp), 2, use_netns=False, env=NO_RATE_LIMIT) as c,
    ):
        c.start(["n1"])
        first = c.nodes["n1"]
        idle = _rss_mb(first.proc.pid)  # type: ignore[union-attr]
        t0 = time.monotonic()
        asyncio.run(_fill(first.address, c.certs, keys))
        fill_s = time.monotonic() - t0
        status = c.agent("n1").Status(agent_pb2.StatusRequest(), timeout=10)
        assert status.state_keys == keys, status.state_keys
        time.sleep(3.0)
        rss = _rss_mb(first.proc.pid)  # type: ignore[union-attr]
        t0 = time.monotonic()
        c.start(["n2"])
        c.wait_for(lambda: len(_digests(c, ["n1", "n2"])) == 1, LIMIT_S, "joiner caught up")
        catch_up = time.monotonic() - t0
        return {
            "keys": keys,
            "puts_per_s": round(keys / fill_s),
            "idle_rss_mb": round(idle, 1),
            "rss_mb": round(rss, 1),
            "joiner_rss_mb": round(_rss_mb(c.nodes["n2"].proc.pid), 1),  # type: ignore[union-attr]
            "joiner_catch_up_s": round(catch_up, 2),
        }


def partition(nodes: int) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster(Path(tmp), nodes, use_netns=True, env=NO_RATE_LIMIT) as c,
    ):
        names = list(c.nodes)
        left, right = names[: nodes // 2], names[nodes // 2 :]
        c.start()
        c.wait_for(lambda: _all_alive(c, names), LIMIT_S, "all alive")
        c.partition(left, right)
        end = time.monotonic() + 10.0
        i = 0
        while time.monotonic() < end:
            for node in (left[i % len(left)], right[i % len(right)]):
                stub = c.agent(node)
                stub.Put(agent_pb2.PutRequest(namespace="p", key=f"k{i % 50}", value=b"%d" % i),
                         timeout=10)  # fmt: skip
                stub.Increment(agent_pb2.IncrementRequest(namespace="p", key="n", delta=1),
                               timeout=10)  # fmt: skip
            i += 1
            time.sleep(0.05)
        healed = time.monotonic()
        c.heal()
        c.wait_for(lambda: _all_alive(c, names), LIMIT_S, "membership healed")
        alive = time.monotonic()
        c.wait_for(lambda: len(_digests(c, names)) == 1, LIMIT_S, "identical replicas",
                   interval=0.1)  # fmt: skip
        same = time.monotonic()
        counts = _counters(c, names)
        if set(counts.values()) != {2 * i}:
            # Keep what a diagnosis needs: per-node counters and digests, again a little later,
            # and every daemon's log.
            first = {n: (counts[n], d) for n, d in _digest_by_node(c, names).items()}
            time.sleep(5.0)
            later = {n: (v, d) for (n, v), d in
                     zip(_counters(c, names).items(), _digest_by_node(c, names).values(),
                         strict=True)}  # fmt: skip
            keep = Path(tempfile.mkdtemp(prefix="state-partition-"))
            for n in names:
                log = c.nodes[n].log_path
                if log.exists():
                    shutil.copy(log, keep / f"{n}.log")
            raise AssertionError(
                f"counter after identical digests: expected {2 * i} on every node; right after"
                f" (counter, digest) {first}; 5 s later {later}; logs kept in {keep}"
            )
        return {
            "writes_per_side": 2 * i,
            "membership_heal_s": round(alive - healed, 2),
            "identical_after_reconnect_s": round(same - healed, 2),
            "identical_after_membership_heal_s": round(same - alive, 2),
            "anti_entropy_interval_s": StateConfig().anti_entropy_interval,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--writes", type=int, default=200)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--partition-nodes", type=int, default=6)
    p.add_argument("--only", choices=["visibility", "memory", "partition"])
    p.add_argument("--json", action="store_true", help="print the targets as JSON")
    args = p.parse_args()
    targets: list[Target] = []
    details: dict[str, dict[str, float]] = {}
    if args.only in (None, "visibility"):
        vis = details["visibility"] = visibility(args.nodes, args.writes)
        targets.append(at_most("put visible on every other node's Watch, p99 (s)", vis["p99_s"], 1))
    if args.only in (None, "memory"):
        mem = details["memory"] = memory_and_catch_up(args.keys)
        targets.append(at_most(f"RSS holding {args.keys} keys (MB)", mem["rss_mb"], 200))
    if args.only in (None, "partition") and netns.available():
        part = details["partition"] = partition(args.partition_nodes)
        targets.append(
            at_most(
                "replicas identical after membership heals (s)",
                part["identical_after_membership_heal_s"],
                2 * part["anti_entropy_interval_s"],
            )
        )
    report(targets, args.json, **details)


if __name__ == "__main__":
    main()
