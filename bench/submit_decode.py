"""What a 4 MiB Submit of tiny tensors costs the node to refuse, before and after the count
check on its raw bytes (issue 21: "~110 MB of protobuf decoding before the tensor count is
checked").

    python -m bench.submit_decode [--json]

Each variant runs in a fresh spawned interpreter, which receives the request's bytes and
reports its peak RSS before and after handling them: ``decode`` is what the node did before
(protobuf decodes the whole request, then the door counts its inputs), ``scan`` is the
guard's decoder now (``transport.wirescan`` counts the inputs from the bytes and refuses the
request undecoded). Target: the scan adds under 1 MiB of peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time

from p2pagent._proto import agent_pb2, common_pb2

METHOD = "/p2pagent.v1.AgentService/Submit"


def request_bytes(limit: int = 4 << 20) -> bytes:
    """A Submit just under ``limit`` bytes: as many one-float tensors as fit."""
    one = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[1], data=b"\0\0\0\0")
    per = len(agent_pb2.SubmitRequest(inputs=[one]).SerializeToString())
    n = (limit - 64) // per
    return agent_pb2.SubmitRequest(model="demo", inputs=[one] * n).SerializeToString()


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(
    variant: str, data: bytes, out: multiprocessing.Queue[tuple[int, int, float, str]]
) -> None:
    from p2pagent.api.peer import request_scans
    from p2pagent.transport import guard

    before = _peak_kib()
    start = time.perf_counter()
    if variant == "decode":
        request = agent_pb2.SubmitRequest.FromString(data)
        outcome = f"decoded {len(request.inputs)} inputs, then refused"
    else:
        decode = guard._tolerant(
            agent_pb2.SubmitRequest.FromString, METHOD, None, request_scans()[METHOD]
        )
        assert decode is not None
        refused = decode(data)
        outcome = getattr(refused, "reason", "not refused")
    seconds = time.perf_counter() - start
    out.put((before, _peak_kib(), seconds, outcome))


def measure(variant: str, data: bytes) -> dict[str, object]:
    ctx = multiprocessing.get_context("spawn")
    q: multiprocessing.Queue[tuple[int, int, float, str]] = ctx.Queue()
    p = ctx.Process(target=_child, args=(variant, data, q))
    p.start()
    before, after, seconds, outcome = q.get(timeout=120)
    p.join(30)
    return {
        "variant": variant,
        "peak_rss_added_mib": (after - before) / 1024,
        "seconds": seconds,
        "outcome": outcome[:120],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = request_bytes()
    rows = [measure(v, data) for v in ("decode", "scan")]
    added = float(rows[1]["peak_rss_added_mib"])  # type: ignore[arg-type]
    targets = [
        {
            "name": "peak RSS added by refusing a 4 MiB Submit of tiny tensors (MiB)",
            "measured": added,
            "target": "< 1",
            "met": added < 1,
        }
    ]
    if args.json:
        print(json.dumps({"request_bytes": len(data), "rows": rows, "targets": targets}))
    else:
        print(f"request: {len(data)} bytes")
        for r in rows:
            print(
                f"{r['variant']:>6}: +{r['peak_rss_added_mib']:.1f} MiB peak RSS, "
                f"{1e3 * float(r['seconds']):.1f} ms: {r['outcome']}"  # type: ignore[arg-type]
            )
    return 0  # a missed target is read from the output, not a failure (bench/all.py)


if __name__ == "__main__":
    sys.exit(main())
