"""What the OpenAI door's server-sent events cost per token, against gRPC Generate.

    python -m bench.openai_door [--small] [--size tiny|small|medium] [--tokens N]
                                [--runs N] [--json]

One daemon serves a decoder folder built in code (``p2pagent.testing.decoder_folders``,
GPT-2, seeded random weights) on gRPC and on the OpenAI door (HTTPS, mutual TLS). Each run
makes the same greedy generation of ``--tokens`` tokens twice, one stream at a time, in
alternating order: through gRPC ``Generate`` (the Python client) and through
``/v1/completions`` with ``stream: true`` (httpx, the library the openai client uses, each
SSE event parsed as JSON). Measured on the client: time to the first token and the gaps
between tokens. With ``return_token_ids`` every token has its own event, so the gaps are
per token on both paths.

Targets: the same token ids on both paths; the door's inter-token p50 at most 1 ms above
gRPC's, and its time to first token at most 5 ms above (one HTTPS request against one gRPC
call on a warm channel).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

from bench._proc import NO_RATE_LIMIT
from p2pagent.client import Client
from p2pagent.identity import certs
from p2pagent.identity.material import TLSPaths
from p2pagent.identity.spiffe import Role
from p2pagent.openai.tls import client_context
from p2pagent.testing.daemon import Daemon, free_port
from p2pagent.testing.decoder_folders import BUILDERS

PROMPT = "Return the path of the file."


async def grpc_run(client: Client, tokens: int) -> tuple[list[int], float, list[float]]:
    start = time.perf_counter()
    ids: list[int] = []
    stamps: list[float] = []
    async for m in client.generate("gpt2", PROMPT, max_new_tokens=tokens, temperature=0):
        for t in m.token_ids:
            ids.append(t)
            stamps.append(time.perf_counter())
    return ids, stamps[0] - start, [b - a for a, b in itertools.pairwise(stamps)]


async def sse_run(
    http: httpx2.AsyncClient, url: str, tokens: int
) -> tuple[list[int], float, list[float]]:
    body = {"model": "gpt2", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
            "stream": True, "return_token_ids": True}  # fmt: skip
    start = time.perf_counter()
    ids: list[int] = []
    stamps: list[float] = []
    async with http.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for t in chunk["choices"][0].get("token_ids", []):
                ids.append(t)
                stamps.append(time.perf_counter())
    return ids, stamps[0] - start, [b - a for a, b in itertools.pairwise(stamps)]


async def measure(certs_dir: Path, node: Daemon, port: int, args: Any) -> dict[str, Any]:
    url = f"https://127.0.0.1:{port}/v1/completions"
    ctx = client_context(TLSPaths.in_dir(certs_dir, "client"))
    grpc_ttft: list[float] = []
    sse_ttft: list[float] = []
    grpc_gaps: list[float] = []
    sse_gaps: list[float] = []
    same = True
    async with (
        Client.from_certs([node.address], certs_dir, follow_s=300) as client,
        httpx2.AsyncClient(verify=ctx, timeout=300) as http,
    ):
        await grpc_run(client, 4)  # warm: model loaded, channel and connection open
        await sse_run(http, url, 4)
        for i in range(args.runs):
            order = ("grpc", "sse") if i % 2 == 0 else ("sse", "grpc")
            got: dict[str, list[int]] = {}
            for path in order:
                if path == "grpc":
                    ids, ttft, gaps = await grpc_run(client, args.tokens)
                    grpc_ttft.append(ttft)
                    grpc_gaps += gaps
                else:
                    ids, ttft, gaps = await sse_run(http, url, args.tokens)
                    sse_ttft.append(ttft)
                    sse_gaps += gaps
                got[path] = ids
            same = same and got["grpc"] == got["sse"] and len(got["sse"]) == args.tokens
    ms = 1e3
    return {
        "same_ids": same,
        "grpc_ttft_ms_p50": statistics.median(grpc_ttft) * ms,
        "sse_ttft_ms_p50": statistics.median(sse_ttft) * ms,
        "grpc_itl_ms_p50": statistics.median(grpc_gaps) * ms,
        "sse_itl_ms_p50": statistics.median(sse_gaps) * ms,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--small", action="store_true", help="CI size")
    p.add_argument("--json", action="store_true", help="print {'targets': [...]} as JSON")
    args = p.parse_args(argv)
    if args.small:
        args.size, args.tokens, args.runs = "tiny", 32, 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        certs_dir = tmp / "certs"
        certs_dir.mkdir()
        certs.init_ca(certs_dir, "bench")
        certs.issue(certs_dir, "n1", Role.NODE, ["127.0.0.1"])
        certs.issue(certs_dir, "client", Role.CLIENT)
        folder = BUILDERS["gpt2"](tmp / "gpt2", size=args.size)
        port = free_port()
        env = {**NO_RATE_LIMIT, "P2PAGENT_GENERATION__FOLDERS": f"gpt2={folder}",
               "P2PAGENT_OPENAI__LISTEN": f"127.0.0.1:{port}"}  # fmt: skip
        node = Daemon("n1", certs_dir, tmp / "n1", env=env).start(timeout=120)
        try:
            detail = asyncio.run(measure(certs_dir, node, port, args))
        finally:
            node.stop()
    detail = {k: round(v, 3) if isinstance(v, float) else v for k, v in detail.items()}
    targets = [
        {
            "name": "the same greedy token ids through SSE and gRPC Generate",
            "measured": detail["same_ids"],
            "target": True,
            "met": detail["same_ids"],
        },
        {
            "name": "SSE inter-token p50 (ms) <= gRPC Generate's + 1 ms",
            "measured": detail["sse_itl_ms_p50"],
            "target": round(detail["grpc_itl_ms_p50"] + 1, 3),
            "met": detail["sse_itl_ms_p50"] <= detail["grpc_itl_ms_p50"] + 1,
        },
        {
            "name": "SSE time to first token p50 (ms) <= gRPC Generate's + 5 ms",
            "measured": detail["sse_ttft_ms_p50"],
            "target": round(detail["grpc_ttft_ms_p50"] + 5, 3),
            "met": detail["sse_ttft_ms_p50"] <= detail["grpc_ttft_ms_p50"] + 5,
        },
    ]
    info = {"size": args.size, "tokens": args.tokens, "runs": args.runs, **detail}
    if args.json:
        print(json.dumps({**info, "targets": targets}, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:20} {v}")
        print("| target | measured | target | met |")
        print("|---|---:|---:|---|")
        for t in targets:
            print(f"| {t['name']} | {t['measured']} | {t['target']} | {t['met']} |")
    return 0 if detail["same_ids"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
