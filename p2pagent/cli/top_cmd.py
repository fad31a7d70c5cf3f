"""``p2pagentctl top``: a live view of every node of the mesh.

Asks the target for the member list, then every reachable member for its status, and shows
one row per member: state, device, queue, running tasks, backlog, throughput (completed tasks
per second between two refreshes), steals, state keys and models. If the target stops
answering, the next refresh asks another member it learned about.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from p2pagent._proto import agent_pb2, common_pb2
from p2pagent.cli import client
from p2pagent.cli.args import INT32, int_in, seconds
from p2pagent.cli.cluster_cmd import STATE_ORDER
from p2pagent.cli.output import emit_json, table
from p2pagent.client import Client
from p2pagent.errors import P2PAgentError, Unavailable
from p2pagent.identity.material import TLSMaterial

COLUMNS = [
    "name", "state", "address", "device", "queue", "running", "backlog_s", "tasks_per_s",
    "completed", "stolen_in", "stolen_out", "keys", "models",
]  # fmt: skip


def register(sub: Any) -> None:
    p = sub.add_parser("top", help="live view of every node: state, load, queue, throughput")
    client.add_connection_flags(p)
    p.add_argument(
        "--interval", type=seconds(zero=False), default=2.0, metavar="S", help="refresh period"
    )
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument(
        "--iterations", type=int_in(0, INT32[1]), default=0, metavar="N", help="stop after N views"
    )
    p.add_argument("--json", action="store_true", help="snapshots as JSON (one per line)")
    p.set_defaults(handler=_top)


class Mesh:
    """A client per member (each asked about itself), kept between refreshes."""

    def __init__(self, targets: list[str], material: TLSMaterial, timeout: float) -> None:
        self.known = list(targets)
        self.material = material
        self.timeout = timeout
        self.clients: dict[str, Client] = {}
        self.completed: dict[str, tuple[float, int]] = {}

    def client(self, address: str) -> Client:
        c = self.clients.get(address)
        if c is None:
            c = self.clients[address] = Client([address], self.material, timeout_s=self.timeout)
        return c

    async def members(self) -> list[common_pb2.Member]:
        for address in list(self.known):
            try:
                resp = await self.client(address).call(
                    "Members", agent_pb2.MembersRequest(), repeatable=True
                )
            except P2PAgentError:
                continue
            reachable = [m.address for m in resp.members if m.state in ("alive", "suspect")]
            self.known = [address] + [a for a in reachable if a != address]
            return list(resp.members)
        raise Unavailable(f"no member answers (tried {', '.join(self.known)})")

    async def status(self, m: common_pb2.Member) -> agent_pb2.StatusResponse | None:
        if m.state not in ("alive", "suspect") or not m.address:
            return None
        try:
            return await self.client(m.address).status()
        except P2PAgentError:
            return None

    async def snapshot(self) -> list[dict[str, Any]]:
        members = await self.members()
        statuses = await asyncio.gather(*(self.status(m) for m in members))
        now = time.monotonic()
        rows = []
        for m, st in zip(members, statuses, strict=True):
            row: dict[str, Any] = {"name": m.name, "state": m.state, "address": m.address}
            if st is not None:
                prev = self.completed.get(m.name)
                rate = None
                if prev is not None and now > prev[0]:
                    rate = round((st.completed - prev[1]) / (now - prev[0]), 2)
                self.completed[m.name] = (now, st.completed)
                row |= {
                    "device": st.device,
                    "queue": st.queue_length,
                    "running": st.running,
                    "backlog_s": round(st.backlog_s, 3),
                    "tasks_per_s": rate,
                    "completed": st.completed,
                    "stolen_in": st.stolen_in,
                    "stolen_out": st.stolen_out,
                    "keys": st.state_keys,
                    "models": list(st.models),
                    "incarnation": st.incarnation,
                    "batching": [batching_doc(b) for b in st.batching],
                }
            elif m.state in ("alive", "suspect"):
                row["state"] = f"{m.state} (no answer)"
            rows.append(row)
        rows.sort(key=lambda r: (STATE_ORDER.get(str(r["state"]), 9), str(r["name"])))
        return rows

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()


async def _top(args: argparse.Namespace) -> int:
    mesh = Mesh(client.targets_of(args), client.material_of(args), min(args.timeout, 2.0))
    live = sys.stdout.isatty() and not args.once and not args.json
    shown = 0
    try:
        while True:
            rows = await mesh.snapshot()
            shown += 1
            if args.json:
                emit_json(rows) if args.once else print(_json_line(rows), flush=True)
            else:
                alive = sum(1 for r in rows if r["state"] == "alive")
                head = (
                    f"p2pagent mesh via {mesh.known[0]}: {len(rows)} members, {alive} alive"
                    f"  ({time.strftime('%H:%M:%S')}, every {args.interval:g}s, Ctrl-C quits)"
                )
                body = table(rows, COLUMNS) + _batching_lines(rows)
                print(("\x1b[H\x1b[2J" if live else "") + head + "\n" + body + "\n", flush=True)
            if args.once or (args.iterations and shown >= args.iterations):
                return 0
            await asyncio.sleep(args.interval)
    finally:
        await mesh.close()


def batching_doc(b: agent_pb2.ModelBatching) -> dict[str, Any]:
    """A model's batching on one node: batches, rows, tokens, padding, queue time."""
    return {
        "model": b.model,
        "batches": b.batches,
        "rows": b.rows,
        "tokens": b.tokens,
        "padded_tokens": b.padded_tokens,
        "padding": round(b.padding_ratio, 3),
        "queue_ms": round(b.mean_queue_s * 1000, 2),
        "rows_per_batch": round(b.mean_batch_rows, 2),
    }


def _batching_lines(rows: list[dict[str, Any]]) -> str:
    """One line per model and node that ran batches (the table's columns stay per node)."""
    lines = []
    for r in rows:
        for b in r.get("batching", []):
            lines.append(
                f"  {r['name']} {b['model']}: {b['batches']} batches, "
                f"{b['rows_per_batch']} rows/batch, {b['tokens']} tokens, "
                f"{b['padding'] * 100:.1f}% padding, queue {b['queue_ms']} ms"
            )
    return ("\nbatching:\n" + "\n".join(lines)) if lines else ""


def _json_line(rows: list[dict[str, Any]]) -> str:
    return json.dumps({"at": time.time(), "members": rows}, sort_keys=True)
