"""A daemon's RSS across a hostile client's and a compromised node's attacks (issue 21).

    python -m bench.attack_memory [--small] [--json]

One daemon serving a no-op model. The baseline, in the same run: its RSS after a warm-up of
ordinary calls (Status, Submit+Wait, Infer), settled. Then the attacks of issue 21 that a
door or a size check now refuses, each repeated: 8 MB msgpack payloads on Replicate, Gossip,
PushPull and Load with a node certificate; Replicate payloads just under the state bound
(decoded, then refused: the dearest a peer can still make us decode); Assign of a tensor
declared [2^31, 2^31] with one byte, and of inputs over ``tasks.max_payload_bytes``; Submits
of unknown models (``../../etc/passwd`` among them) and of 60 MiB payloads; 5,000 Submits
from one identity as fast as it can (rate limit and quota); Waits with a 1 MiB task id.
Target: RSS after the whole suite, settled, within 50 MB of the baseline. Also printed: how
many of the 5,000 were accepted and how much the task journal grew.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import grpc
import msgpack  # type: ignore[import-untyped]
import numpy as np

from bench.state_cluster import _rss_mb
from p2pagent._proto import agent_pb2, agent_pb2_grpc, common_pb2, peer_pb2, peer_pb2_grpc
from p2pagent.identity import certs
from p2pagent.identity.spiffe import Role
from p2pagent.inference import demo_model
from p2pagent.testing.daemon import Daemon
from p2pagent.transport.channels import channel_options

TARGET_MB = 50.0
MIB = 1 << 20


def _creds(d: Path, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (d / "ca.crt").read_bytes(),
        (d / f"{name}.key").read_bytes(),
        (d / f"{name}.crt").read_bytes(),
    )


def _channel(node: Daemon, d: Path, name: str) -> grpc.Channel:
    return grpc.secure_channel(
        node.address, _creds(d, name), options=channel_options("test", 80 * MIB)
    )


def _delta_message(sender: str, n: int) -> bytes:
    """A state delta message with ``n`` empty deltas: one byte each, dear to decode."""
    head = msgpack.packb([1, "d", sender], use_bin_type=True)[1:]
    return b"\x94" + head + b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def _x(rows: int) -> common_pb2.Tensor:
    """``rows`` inputs of the no-op model (256 float32 a row: 1 KiB)."""
    data = np.zeros((rows, 256), "<f4").tobytes()
    return common_pb2.Tensor(
        name="input", dtype=common_pb2.DTYPE_FLOAT32, shape=[rows, 256], data=data
    )


def _code(call: Callable[[], object]) -> str:
    """The status name a call ends with (a stream is read to its end)."""
    try:
        result = call()
        if isinstance(result, grpc.Call) and hasattr(result, "__iter__"):
            for _ in cast(Iterable[object], result):
                pass
        return "OK"
    except grpc.RpcError as e:
        return e.code().name  # type: ignore[attr-defined, no-any-return]


def settle(pid: int, seconds: float = 3.0) -> float:
    time.sleep(seconds)
    return _rss_mb(pid)


def warm_up(node: Daemon, d: Path, rounds: int) -> None:
    with _channel(node, d, "client") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for _ in range(rounds):
            stub.Status(agent_pb2.StatusRequest(), timeout=30)
            task = stub.Submit(agent_pb2.SubmitRequest(model="noop", inputs=[_x(1)]), timeout=30)
            list(stub.Wait(agent_pb2.WaitRequest(task_id=task.task_id), timeout=60))
            stub.Infer(agent_pb2.InferRequest(model="noop", inputs=[_x(1)]), timeout=30)


def peer_attacks(
    node: Daemon, d: Path, repeat: int, codes: Counter[str], rss: dict[str, float]
) -> None:
    """Each attack ``repeat`` times; ``rss``: the daemon's RSS after each kind."""
    big = common_pb2.Envelope(version=1, payload=_delta_message("n9", 8_000_000))
    # Just under the state bound (1 MiB + slack): decoded, then refused as malformed.
    near = common_pb2.Envelope(version=1, payload=_delta_message("n9", MIB - 64))
    huge = peer_pb2.TaskSpec(task_id="n9-0123456789abcdef", origin="n9", model="noop")
    huge.inputs.append(
        common_pb2.Tensor(dtype=common_pb2.DTYPE_UINT8, shape=[2**31, 2**31], data=b"\1")
    )
    over = peer_pb2.TaskSpec(task_id="n9-0123456789abcdef", origin="n9", model="noop")
    over.inputs.append(_x(4097))  # 1 KiB over the inputs bound, under the request bound
    with _channel(node, d, "n9") as ch:
        stub = peer_pb2_grpc.PeerServiceStub(ch)
        attacks: dict[str, Callable[[], object]] = {
            "replicate_8mb": lambda: stub.Replicate(big, timeout=60),
            "replicate_near_bound": lambda: stub.Replicate(near, timeout=60),
            "gossip_8mb": lambda: stub.Gossip(big, timeout=60),
            "push_pull_8mb": lambda: stub.PushPull(big, timeout=60),
            "load_8mb": lambda: stub.Load(big, timeout=60),
            "assign_2^62_elements": lambda: stub.Assign(peer_pb2.AssignRequest(task=huge)),
            "assign_4mib_inputs": lambda: stub.Assign(peer_pb2.AssignRequest(task=over)),
        }
        for name, call in attacks.items():
            for _ in range(repeat):
                code = _code(call)
                codes[f"{name}:{code}"] += 1
            rss[name] = round(_rss_mb(node.proc.pid), 1)  # type: ignore[union-attr]


def client_attacks(node: Daemon, d: Path, repeat: int, codes: Counter[str]) -> None:
    with _channel(node, d, "client") as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        for name in ("nope", "../../etc/passwd"):
            for _ in range(repeat * 10):
                req = agent_pb2.SubmitRequest(model=name, inputs=[_x(1)])
                codes[
                    f"submit_model_{name}:{_code(lambda req=req: stub.Submit(req, timeout=30))}"
                ] += 1  # type: ignore[misc]
        sixty = agent_pb2.SubmitRequest(model="noop", inputs=[_x(60 * 1024)])
        for _ in range(3):
            codes[f"submit_60mib:{_code(lambda: stub.Submit(sixty, timeout=60))}"] += 1
        long_id = agent_pb2.WaitRequest(task_id="x" * MIB)
        for _ in range(repeat):
            codes[f"wait_1mib_id:{_code(lambda: stub.Wait(long_id, timeout=30))}"] += 1


async def flood(node: Daemon, d: Path, n: int) -> tuple[Counter[str], float]:
    """``n`` Submits from one identity, 64 at a time: how many get through, and how fast."""
    codes: Counter[str] = Counter()
    req = agent_pb2.SubmitRequest(model="noop", inputs=[_x(1)])
    async with grpc.aio.secure_channel(
        node.address, _creds(d, "publisher"), options=channel_options("test", 8 * MIB)
    ) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        sem = asyncio.Semaphore(64)

        async def one() -> None:
            async with sem:
                try:
                    await stub.Submit(req, timeout=60)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        return codes, time.monotonic() - t0


def _journal_bytes(node: Daemon) -> int:
    return sum(p.stat().st_size for p in node.data.glob("tasks.db*"))


def run(small: bool) -> dict[str, object]:
    repeat, submissions = (2, 500) if small else (10, 5000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs.init_ca(root / "certs", "test")
        for name in ("a1", "n9"):
            certs.issue(root / "certs", name, Role.NODE)
        for role in (Role.CLIENT, Role.PUBLISHER):
            certs.issue(root / "certs", role.value, role)
        files = demo_model.write_all(root / "model")
        node = Daemon("a1", root / "certs", root / "a1",
                      args=["--serve", f"noop={files['noop_torchscript']}"])  # fmt: skip
        try:
            node.start(timeout=120)
            pid = node.proc.pid  # type: ignore[union-attr]
            warm_up(node, root / "certs", 20)
            before = settle(pid)
            journal_before = _journal_bytes(node)
            codes: Counter[str] = Counter()
            t0 = time.monotonic()
            rss_by_attack: dict[str, float] = {}
            peer_attacks(node, root / "certs", repeat, codes, rss_by_attack)
            peak_peer = _rss_mb(pid)
            client_attacks(node, root / "certs", repeat, codes)
            flooded, flood_s = asyncio.run(flood(node, root / "certs", submissions))
            attacks_s = time.monotonic() - t0
            after = settle(pid, 5.0)
            journal_growth = _journal_bytes(node) - journal_before
            alive = node.running
        finally:
            node.kill()
    growth = after - before
    return {
        "baseline_rss_mb": round(before, 1),
        "rss_after_peer_attacks_mb": round(peak_peer, 1),
        "rss_after_each_peer_attack_mb": rss_by_attack,
        "rss_after_suite_mb": round(after, 1),
        "rss_growth_mb": round(growth, 1),
        "attack_calls": dict(codes),
        "flood_submissions": submissions,
        "flood_answers": dict(flooded),
        "flood_s": round(flood_s, 2),
        "journal_growth_mb": round(journal_growth / MIB, 2),
        "suite_s": round(attacks_s, 1),
        "daemon_alive": alive,
        "targets": [
            {
                "name": "RSS after the attack suite - baseline (MB)",
                "measured": round(growth, 1),
                "target": f"<= {TARGET_MB:g}",
                "met": growth <= TARGET_MB and alive,
            },
        ],
    }


def main() -> int:
    p = argparse.ArgumentParser(description="daemon RSS across the issue 21 attack suite")
    p.add_argument("--small", action="store_true", help="CI size: fewer repeats, 500 Submits")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args()
    out = run(args.small)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for k, v in out.items():
        if k != "targets":
            print(f"{k:28} {v}")
    for t in out["targets"]:  # type: ignore[attr-defined]
        print(f"{t['name']:28} {t['measured']} (target {t['target']}): "
              f"{'met' if t['met'] else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
