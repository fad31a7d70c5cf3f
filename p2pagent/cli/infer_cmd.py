"""``p2pagentctl infer``: one inference through any node."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.output import emit_json
from p2pagent.cli.tensors import describe, from_proto, read_inputs


def register(sub: Any) -> None:
    p = sub.add_parser("infer", help="run one inference on a model by name")
    client.add_connection_flags(p)
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--input", required=True, metavar="FILE", help=".npy or JSON input")
    p.add_argument("--input-name", default="input", help="name for a single unnamed input")
    p.add_argument("--version", default="", help="pin a model version (manifest id)")
    p.add_argument("--output", metavar="FILE.npy", help="also save the first output here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_infer)


async def _infer(args: argparse.Namespace) -> int:
    inputs = read_inputs(args.input, args.input_name)
    req = agent_pb2.InferRequest(model=args.model, inputs=inputs, model_version=args.version)
    async with client.mesh(args) as mesh:
        resp = await mesh.call("Infer", req, repeatable=True)  # not journaled: safe to repeat
    if args.output and resp.outputs:
        np.save(Path(args.output), from_proto(resp.outputs[0]), allow_pickle=False)
    outputs = [describe(t, full=args.json) for t in resp.outputs]
    if args.json:
        emit_json({"executor": resp.executor, "compute_s": resp.compute_s, "outputs": outputs})
        return 0
    print(f"ran on {resp.executor} in {resp.compute_s * 1000:.2f} ms")
    for o in outputs:
        print(f"{o['name']}: {o['dtype']}{o['shape']}")
        if "argmax" in o:
            print(f"  argmax per row: {o['argmax']}")
        print(f"  {o.get('data', o.get('data_head'))}")
    return 0
