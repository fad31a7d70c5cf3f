"""``p2pagentctl generate``: text from a decoder model, printed as it is made."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from p2pagent.cli import client
from p2pagent.cli.args import UINT32_MAX, UINT64_MAX, int_in
from p2pagent.cli.output import emit_json


def finite(text: str) -> float:
    """An argparse ``type``: a finite number (the node checks its range and says why)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate text with a decoder model, streamed")
    client.add_connection_flags(p)
    p.add_argument("--model", required=True, help="decoder model name")
    p.add_argument(
        "--version", default="", help="pin a published version (manifest id); default newest"
    )
    p.add_argument("--max-new-tokens", type=int_in(1, UINT32_MAX), default=64, metavar="N")
    p.add_argument("--temperature", type=finite, default=0.0, metavar="T", help="0 = greedy")
    p.add_argument("--top-p", type=finite, default=None, metavar="P", help="in (0, 1]")
    p.add_argument("--top-k", type=int_in(0, UINT32_MAX), default=0, metavar="K")
    p.add_argument("--seed", type=int_in(0, UINT64_MAX), default=None, metavar="S")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="repeatable")
    p.add_argument(
        "--chat", action="store_true", help="send PROMPT as one user message (chat template)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object at the end")
    p.add_argument("prompt", metavar="PROMPT")
    p.set_defaults(handler=_generate)


async def _generate(args: argparse.Namespace) -> int:
    text: list[str] = []
    ids: list[int] = []
    last = None
    async with client.mesh(args) as c:
        stream = c.generate(
            args.model,
            "" if args.chat else args.prompt,
            messages=[("user", args.prompt)] if args.chat else (),
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            stop=args.stop,
            model_version=args.version,
        )
        async for message in stream:
            text.append(message.text)
            ids.extend(message.token_ids)
            if not args.json and message.text:
                sys.stdout.write(message.text)
                sys.stdout.flush()
            last = message
    if last is None:
        return 1
    if args.json:
        emit_json(
            {
                "text": "".join(text),
                "token_ids": ids,
                "finish_reason": last.finish_reason,
                "prompt_tokens": last.prompt_tokens,
                "generated_tokens": last.generated_tokens,
                "node": last.node,
            }
        )
    else:
        # Which node ran it: a full node hands a sequence to a peer with room.
        where = f" on {last.node}" if last.node else ""
        sys.stdout.write(f"\n[{last.finish_reason}: {last.generated_tokens} tokens{where}]\n")
    return 0
