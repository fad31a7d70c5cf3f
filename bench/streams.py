"""Streams under revocation and a consumer that stops reading (issue 21 targets).

    python -m bench.streams [--watches 20] [--rounds 3] [--mib 100] [--small] [--json]

1. **Revocation.** A 3-node mesh of real daemons; one client identity holds ``--watches``
   open Watch streams on every node. An admin revokes it on n1; we time, from the Revoke's
   acknowledgement, until the last of those streams has ended (PERMISSION_DENIED) on every
   node. Target: within 2 s. The floor, measured in the same run on the same streams just
   before: how long an ordinary write sent to n1 takes to reach a watcher on every node (the
   revocation travels the same way, as a write to the ``_revoked`` namespace).
2. **A Watch consumer that never reads.** ``--mib`` MB are written in 1 MB values to one key
   of a fresh daemon, three times: with nobody watching (the baseline), with a Watch on it
   that reads nothing and ``state.watch_buffer_bytes`` at its default, and the same with the
   budget raised to 1 GiB (what an unbounded watcher costs). The watcher's cost is the RSS
   growth minus the baseline's. Target: at most the budget + 10%. The stalled stream must
   end with RESOURCE_EXHAUSTED naming the seq to resume from (a correctness check: the run
   fails otherwise).

The machine is usually shared: RSS and times are noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.state_cluster import _rss_mb
from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.identity import certs
from p2pagent.identity import material as tls
from p2pagent.identity.spiffe import Role
from p2pagent.state.config import StateConfig
from p2pagent.testing.cluster import Cluster
from p2pagent.testing.daemon import Daemon
from p2pagent.transport.channels import channel_options

MIB = 1 << 20
REVOKE_TARGET_S = 2.0


def _channel(address: str, certs_dir: Path, who: str) -> grpc.aio.Channel:
    m = tls.load(tls.TLSPaths.in_dir(certs_dir, who))
    creds = grpc.ssl_channel_credentials(m.ca_pem, m.key_pem, m.cert_pem)
    opts = [*channel_options(m.cluster, 64 * MIB), ("grpc.use_local_subchannel_pool", 1)]
    return grpc.aio.secure_channel(address, creds, options=opts)


# ---- 1. revocation --------------------------------------------------------------------------


async def _revoke_round(c: Cluster, who: str, watches: int) -> tuple[float, float]:
    """(seconds from sending a write to every watcher seeing it, seconds from the Revoke's ack
    to every stream ended)."""
    certs.issue(c.certs, who, Role.CLIENT)
    nodes = list(c.nodes)
    channels = {n: _channel(c.nodes[n].address, c.certs, who) for n in nodes}
    admin = _channel(c.nodes["n1"].address, c.certs, "admin")
    try:
        ns = f"bench-{who}"
        calls = [
            (
                n,
                agent_pb2_grpc.AgentServiceStub(channels[n]).Watch(
                    agent_pb2.WatchRequest(namespace=ns)
                ),
            )
            for n in nodes
            for _ in range(watches)
        ]
        await asyncio.sleep(1.0)  # every Watch registered on its node
        stub = agent_pb2_grpc.AgentServiceStub(admin)
        put_sent = time.monotonic()
        await stub.Put(agent_pb2.PutRequest(namespace=ns, key="k", value=b"v"), timeout=10)
        await asyncio.gather(*(call.read() for _, call in calls))
        spread = time.monotonic() - put_sent

        ended: list[float] = []

        async def until_end(node: str, call: Any) -> None:
            try:
                while await call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.PERMISSION_DENIED:
                    raise RuntimeError(f"stream on {node} ended with {e.code()}") from e
                ended.append(time.monotonic())
                return
            raise RuntimeError(f"stream on {node} ended without an error")

        waiters = [asyncio.ensure_future(until_end(n, call)) for n, call in calls]
        uri = f"spiffe://{c.cluster}/client/{who}"
        await stub.Revoke(agent_pb2.RevokeRequest(identity=uri, reason="bench"), timeout=10)
        acked = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*waiters), 60)
        return spread, max(ended) - acked
    finally:
        for ch in [*channels.values(), admin]:
            await ch.close()


def revocation(watches: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), 3, use_netns=False) as c:
        c.start()
        c.wait_for(
            lambda: all(
                sum(state == "alive" for state, _ in c.members(n).values()) == 3 for n in c.nodes
            ),
            60,
            "mesh formed",
        )

        async def all_rounds() -> list[tuple[float, float]]:
            return [await _revoke_round(c, f"victim{r}", watches) for r in range(rounds)]

        results = asyncio.run(all_rounds())
    spreads = [s for s, _ in results]
    ends = [e for _, e in results]
    return {
        "streams_per_round": 3 * watches,
        "write_reaches_every_watcher_s_p50": round(statistics.median(spreads), 3),
        "revoked_streams_all_ended_s_p50": round(statistics.median(ends), 3),
        "revoked_streams_all_ended_s_max": round(max(ends), 3),
    }


# ---- 2. a Watch that never reads -----------------------------------------------------------


async def _stall(
    address: str, pid: int, certs_dir: Path, mib: int, watch: bool
) -> tuple[float, str]:
    """(RSS growth in MB of a fresh node while ``mib`` MB are written to one key, with a
    Watch on it that reads nothing when ``watch``; how that Watch ended)."""
    value = os.urandom(1_000_000)
    async with _channel(address, certs_dir, "client") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        await stub.Status(agent_pb2.StatusRequest(), timeout=10)
        await asyncio.sleep(1.0)
        before = _rss_mb(pid)
        call = None
        if watch:
            call = stub.Watch(agent_pb2.WatchRequest(namespace="big", prefix="k"), timeout=600)
            await asyncio.sleep(0.5)
        for i in range(mib):
            v = value[i:] + value[:i]
            await stub.Put(agent_pb2.PutRequest(namespace="big", key="k", value=v), timeout=30)
        await asyncio.sleep(1.0)
        grown = _rss_mb(pid) - before
        if call is None:
            return grown, "no watcher"
        seen = 0
        try:
            while seen < mib and await call.read() is not grpc.aio.EOF:
                seen += 1
        except grpc.aio.AioRpcError as e:
            resume = dict(e.trailing_metadata() or ()).get("p2pagent-resume-from-seq")
            return grown, f"{e.code().name} after {seen} changes, resume_from_seq={resume}"
        call.cancel()
        return grown, f"all {seen} changes delivered"


def stalled_watch(mib: int) -> dict[str, Any]:
    budget = StateConfig().watch_buffer_bytes
    out: dict[str, Any] = {"written_mb": mib, "watch_buffer_bytes": budget}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cdir = root / "certs"
        certs.init_ca(cdir, "bench")
        certs.issue(cdir, "n1", Role.NODE, ["127.0.0.1"])
        certs.issue(cdir, "client", Role.CLIENT)
        # A fresh daemon each: freed memory stays in a process's heap, so one run's garbage
        # would hide the next one's growth.
        for label, watch, env in (
            ("no_watcher", False, {}),
            ("stalled_default_budget", True, {}),
            ("stalled_budget_1gib", True, {"P2PAGENT_STATE__WATCH_BUFFER_BYTES": str(1 << 30)}),
        ):
            d = Daemon("n1", cdir, root / label, env=env).start()
            try:
                assert d.proc is not None
                grown, outcome = asyncio.run(_stall(d.address, d.proc.pid, cdir, mib, watch))
            finally:
                d.kill()
            out[f"{label}_rss_growth_mb"] = round(grown, 1)
            out[f"{label}_stream_end"] = outcome
    out["stalled_watcher_cost_mb"] = round(
        out["stalled_default_budget_rss_growth_mb"] - out["no_watcher_rss_growth_mb"], 1
    )
    out["unbounded_watcher_cost_mb"] = round(
        out["stalled_budget_1gib_rss_growth_mb"] - out["no_watcher_rss_growth_mb"], 1
    )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--watches", type=int, default=20, help="Watch streams per node")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=100, help="MB written past the stalled Watch")
    p.add_argument("--small", action="store_true", help="CI size")
    p.add_argument("--json", action="store_true", help="print {'targets': [...]} as JSON")
    args = p.parse_args()
    if args.small:
        args.watches, args.rounds, args.mib = 5, 1, 20
    rev = revocation(args.watches, args.rounds)
    stall = stalled_watch(args.mib)
    budget_mb = stall["watch_buffer_bytes"] / MIB
    growth = stall["stalled_watcher_cost_mb"]
    ended_ok = stall["stalled_default_budget_stream_end"].startswith("RESOURCE_EXHAUSTED")
    targets = [
        {
            "name": "revoked identity: every open stream on every node ended (s, max)",
            "measured": rev["revoked_streams_all_ended_s_max"],
            "target": REVOKE_TARGET_S,
            "met": rev["revoked_streams_all_ended_s_max"] <= REVOKE_TARGET_S,
        },
        {
            "name": "stalled Watch: RSS cost (MB, growth minus no-watcher growth) <= budget + 10%",
            "measured": growth,
            "target": round(budget_mb * 1.1, 2),
            "met": growth <= budget_mb * 1.1,
        },
    ]
    if args.json:
        print(json.dumps({"revocation": rev, "stalled_watch": stall, "targets": targets}, indent=2))
    else:
        for k, v in {**rev, **stall}.items():
            print(f"{k:40} {v}")
        print("| target | measured | target | met |")
        print("|---|---:|---:|---|")
        for t in targets:
            print(f"| {t['name']} | {t['measured']} | {t['target']} | {t['met']} |")
    if not ended_ok:
        print("FAULT: the stalled Watch was not ended with RESOURCE_EXHAUSTED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
