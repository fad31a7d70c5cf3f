"""Benchmarks of the pure replicated-state core, each against a baseline from the same run.

- merge: LWW-map op deltas merged per second by a replica (decoded, and decoded from bytes),
  versus plain ``dict`` assignments of the same values (the floor of any map update);
- delta size: encoded bytes of one changed key's delta in a 10,000-key map versus the encoded
  full state (all slices);
- memory: traced bytes of a replica holding N small keys versus a plain dict of the same
  keys and values;
- catch-up: a joiner syncing N keys from scratch through digests, with the message count,
  largest message (must stay under max_message_bytes) and wall time.

``python -m bench.state_core [--keys 100000] [--deltas 50000] [--json [FILE]]``

Targets: ``DotMap.merge`` >= 50,000 deltas/s; one key's delta <= 1/10 of the full state; a
synced replica of ``--keys`` keys under 100 MB of traced memory (well under the daemon's 200 MB
RSS bound); every catch-up message <= ``state.max_message_bytes``. ``--json`` prints one object
on stdout, ``{"targets": [...], "merge": ..., ...}``; ``--json FILE`` writes it to FILE.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
from typing import Any

from bench._targets import Target, add_json_flag, at_least, at_most, emit, human, print_table
from p2pagent.state.codec import decode_message, encode_message
from p2pagent.state.config import StateConfig
from p2pagent.state.crdt import DotMap
from p2pagent.state.messages import DeltaMessage, DigestMessage
from p2pagent.state.replica import Replica


def _writer_deltas(n: int, keys: int, seed: int = 1) -> list[DeltaMessage]:
    rng = random.Random(seed)
    w = Replica("writer")
    w.on_membership(["reader"])
    out: list[DeltaMessage] = []
    for i in range(n):
        w.put_lww("ns", f"key{rng.randrange(keys):06d}", rng.randbytes(16), 1000.0 + i * 1e-3)
        for o in w.take_gossip(0.0):
            assert isinstance(o.message, DeltaMessage)
            out.append(o.message)
    return out


def bench_merge(n: int) -> dict[str, Any]:
    msgs = _writer_deltas(n, 10_000)
    wire = [encode_message(m) for m in msgs]
    # Baseline: the same updates as dict assignments.
    plain: dict[str, bytes] = {}
    updates = [
        (ns + "/" + key, ks.dots) for m in msgs for d in m.deltas for ns, key, ks in d.state.items()
    ]
    t0 = time.perf_counter()
    for k, v in updates:
        plain[k] = v  # type: ignore[assignment]
    base = time.perf_counter() - t0

    # The inputs built above are long-lived: keep the cyclic GC from re-scanning them during
    # the timed loops (the daemon does the same with gc.freeze() after loading its state).
    gc.collect()
    gc.freeze()
    r = Replica("reader")
    t0 = time.perf_counter()
    for m in msgs:
        r.apply(m, 2000.0)
    merged = time.perf_counter() - t0
    st = DotMap()
    t0 = time.perf_counter()
    for m in msgs:
        for d in m.deltas:
            st.merge(d.state)
    core = time.perf_counter() - t0

    r2 = Replica("reader")
    t0 = time.perf_counter()
    for data in wire:
        r2.apply(decode_message(data), 2000.0)
    decoded = time.perf_counter() - t0
    gc.unfreeze()
    assert r.state_digest() == r2.state_digest()
    return {
        "deltas": n,
        "dotmap_merge_per_s": round(n / core),
        "replica_apply_per_s": round(n / merged),
        "decode_and_merge_per_s": round(n / decoded),
        "dict_baseline_per_s": round(n / base),
        "merge_vs_dict": round(base / merged, 4),
    }


def _full_state_bytes(r: Replica) -> tuple[int, int, int]:
    answers = r.answer_digest(DigestMessage("new", {}, {}, b"", False))
    sizes = [len(encode_message(m)) for m in answers]
    return sum(sizes), len(sizes), max(sizes, default=0)


def bench_delta_size(keys: int = 10_000) -> dict[str, Any]:
    r = Replica("a")
    r.on_membership(["b"])
    rng = random.Random(2)
    for i in range(keys):
        r.put_lww("ns", f"key{i:06d}", rng.randbytes(16), 1000.0)
    r.take_gossip(0.0)
    full, _, _ = _full_state_bytes(r)
    r.put_lww("ns", "key004242", b"changed-value-16", 2000.0)
    (out,) = r.take_gossip(0.0)
    delta = len(encode_message(out.message))
    return {
        "keys": keys,
        "full_state_bytes": full,
        "one_key_delta_bytes": delta,
        "delta_over_full": round(delta / full, 6),
    }


def bench_memory(keys: int) -> dict[str, Any]:
    rng = random.Random(3)
    gc.collect()
    tracemalloc.start()
    plain = {f"key{i:06d}": rng.randbytes(16) for i in range(keys)}
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    values = list(plain.items())
    del plain
    gc.collect()
    tracemalloc.start()
    r = Replica("a")
    for k, v in values:
        r.put_lww("ns", k, v, 1000.0)
    r.take_persist()  # drop the dirty set, as the driver does
    r._pending.clear()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    buffer_bytes = r.buffer.size_bytes
    r.buffer.drop_acknowledged({"a": keys})  # what the buffer holds is bounded separately
    gc.collect()
    tracemalloc.start()
    r2 = Replica("b")
    r2.apply(
        DeltaMessage(
            "a",
            tuple(
                d
                for m in r.answer_digest(DigestMessage("b", {}, {}, b"", False))
                if isinstance(m, DeltaMessage)
                for d in m.deltas
            ),
        ),
        1.0,
    )
    r2.take_persist()
    synced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "keys": keys,
        "replica_mb_with_buffer_and_log": round(used / 1e6, 1),
        "buffer_payload_mb": round(buffer_bytes / 1e6, 1),
        "replica_mb_synced": round(synced / 1e6, 1),
        "plain_dict_mb": round(base / 1e6, 1),
        "synced_vs_dict": round(synced / base, 2),
    }


def bench_catch_up(keys: int) -> dict[str, Any]:
    cfg = StateConfig()
    old = Replica("old", cfg)
    rng = random.Random(4)
    for i in range(keys):
        old.put_lww("ns", f"key{i:06d}", rng.randbytes(rng.randint(8, 64)), 1000.0)
    for i in range(0, keys, 10):
        old.delete("ns", f"key{i:06d}")
    new = Replica("new", cfg)
    t0 = time.perf_counter()
    count = biggest = total = 0
    for _ in range(3):
        answers = old.answer_digest(
            DigestMessage("new", {}, {}, b"", False) if not count else new.digest()
        )
        if not answers:
            break
        for m in answers:
            data = encode_message(m)
            count += 1
            total += len(data)
            biggest = max(biggest, len(data))
            new.handle(decode_message(data), 2000.0)
    elapsed = time.perf_counter() - t0
    assert new.state_digest() == old.state_digest()
    assert biggest <= cfg.max_message_bytes
    return {
        "keys": keys,
        "messages": count,
        "bytes": total,
        "largest_message": biggest,
        "limit": cfg.max_message_bytes,
        "seconds": round(elapsed, 2),
    }


def targets(results: dict[str, dict[str, Any]]) -> list[Target]:
    merge, delta = results["merge"], results["delta_size"]
    memory, catch_up = results["memory"], results["catch_up"]
    return [
        at_least("DotMap.merge of LWW deltas (per s)", merge["dotmap_merge_per_s"], 50_000),
        at_most(f"one key's delta / full state, {delta['keys']:,} keys",
                delta["delta_over_full"], 0.1),
        at_most(f"synced replica of {memory['keys']:,} keys (MB traced)",
                memory["replica_mb_synced"], 100),
        at_most(f"catch-up of {catch_up['keys']:,} keys: largest message (bytes)",
                catch_up["largest_message"], catch_up["limit"]),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--deltas", type=int, default=50_000)
    add_json_flag(p)
    args = p.parse_args()
    if args.keys <= 0 or args.deltas <= 0:
        p.error("--keys and --deltas must be positive")
    with human(args.json):
        results = {
            "merge": bench_merge(args.deltas),
            "delta_size": bench_delta_size(min(10_000, args.keys)),
            "memory": bench_memory(args.keys),
            "catch_up": bench_catch_up(args.keys),
        }
        for name, row in results.items():
            print(f"{name:11s} " + "  ".join(f"{k}={v}" for k, v in row.items()))
        result = targets(results)
        print_table(result)
    emit(args.json, result, **results)


if __name__ == "__main__":
    main()
