"""``p2pagentctl infer``: one inference through any node."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.output import emit_json
from p2pagent.cli.tensors import describe, read_inputs, save_outputs
from p2pagent.errors import P2PAgentError


def register(sub: Any) -> None:
    p = sub.add_parser("infer", help="run one inference on a model by name")
    client.add_connection_flags(p)
    p.add_argument("--model", required=True, help="model name")
    p.add_argument(
        "--input", required=True, metavar="FILE", help=".npy, .npz (several named) or JSON input"
    )
    p.add_argument("--input-name", default="input", help="name for a single unnamed input")
    p.add_argument("--version", default="", help="pin a model version (manifest id)")
    p.add_argument(
        "--output",
        metavar="FILE",
        help="also save the outputs: FILE.npz holds every one by name; FILE.npy the only one",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_infer)


async def _infer(args: argparse.Namespace) -> int:
    inputs = read_inputs(args.input, args.input_name)
    req = agent_pb2.InferRequest(model=args.model, inputs=inputs, model_version=args.version)
    async with client.mesh(args) as mesh:
        resp = await mesh.call("Infer", req, repeatable=True)  # not journaled: safe to repeat
    if args.output and resp.outputs:
        save_outputs(Path(args.output), list(resp.outputs))
    task = await _task_of(args)
    outputs = [describe(t, full=args.json, task=task) for t in resp.outputs]
    if args.json:
        emit_json({"executor": resp.executor, "compute_s": resp.compute_s, "outputs": outputs})
        return 0
    print(f"ran on {resp.executor} in {resp.compute_s * 1000:.2f} ms")
    for o in outputs:
        print(f"{o['name']}: {o['dtype']}{o['shape']}")
        if "argmax" in o:
            print(f"  argmax per row: {o['argmax']}")
        if "norm" in o:
            print(f"  L2 norm per row: {o['norm']}")
        print(f"  {o.get('data', o.get('data_head'))}")
    return 0


async def _task_of(args: argparse.Namespace) -> str:
    """The task a published folder declares ("" for other models, or when unknown): the
    printing fits it (no argmax of an embedding)."""
    try:
        async with client.mesh(args) as mesh:
            resp = await mesh.call(
                "ListModels", agent_pb2.ListModelsRequest(name=args.model), repeatable=True
            )
    except P2PAgentError:
        return ""
    for v in reversed(resp.versions):
        if v.format == "hf_folder" and v.metadata.arch_config:
            task = json.loads(v.metadata.arch_config).get("task", "")
            return task if isinstance(task, str) else ""
    return ""
