"""``p2pagentctl embed|classify|tag``: text in, through any node serving a Hugging Face model
folder (the node tokenizes)."""

from __future__ import annotations

import argparse
from typing import Any

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.output import emit_json
from p2pagent.inference.hf.tokenize import check_texts

#: Values of a vector printed in the table view (all of them with --json).
SHOWN = 8


def register(sub: Any) -> None:
    for name, help in (
        ("embed", "one embedding vector per text (a sentence-embedding model folder)"),
        ("classify", "every label's score per text (a sequence-classification folder)"),
        ("tag", "the entities of each text (a token-classification folder)"),
    ):
        p = sub.add_parser(name, help=help)
        client.add_connection_flags(p)
        p.add_argument("--model", required=True, help="model name")
        p.add_argument("texts", nargs="+", metavar="TEXT")
        p.add_argument("--truncate", action="store_true", help="cut texts past the model's maximum")
        p.add_argument("--version", default="", help="pin a model version (manifest id)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=_HANDLERS[name])


def _request(args: argparse.Namespace, kind: type[Any]) -> Any:
    check_texts(args.model, args.texts)
    return kind(
        model=args.model, texts=args.texts, truncate=args.truncate, model_version=args.version
    )


async def _embed(args: argparse.Namespace) -> int:
    req = _request(args, agent_pb2.EmbedRequest)
    async with client.mesh(args) as mesh:
        resp = await mesh.call("Embed", req, repeatable=True)
    vectors = [list(v.values) for v in resp.embeddings]
    if args.json:
        emit_json({"executor": resp.executor, "embeddings": vectors, "tokens": list(resp.tokens)})
        return 0
    print(f"ran on {resp.executor}: {len(vectors)} vector(s) of {len(vectors[0])} values")
    for text, vec, tokens in zip(args.texts, vectors, resp.tokens):
        head = ", ".join(f"{x:.4f}" for x in vec[:SHOWN])
        print(f"{_short(text)} ({tokens} tokens): [{head}{', ...' if len(vec) > SHOWN else ''}]")
    return 0


async def _classify(args: argparse.Namespace) -> int:
    req = _request(args, agent_pb2.ClassifyRequest)
    async with client.mesh(args) as mesh:
        resp = await mesh.call("Classify", req, repeatable=True)
    results = [[{"label": s.label, "score": s.score} for s in r.scores] for r in resp.results]
    if args.json:
        emit_json({"executor": resp.executor, "results": results})
        return 0
    print(f"ran on {resp.executor}")
    for text, scores in zip(args.texts, results):
        ranked = "  ".join(f"{s['label']} {s['score']:.3f}" for s in scores)
        print(f"{_short(text)}: {ranked}")
    return 0


async def _tag(args: argparse.Namespace) -> int:
    req = _request(args, agent_pb2.ClassifyTokensRequest)
    async with client.mesh(args) as mesh:
        resp = await mesh.call("ClassifyTokens", req, repeatable=True)
    results = [
        [
            {"label": e.label, "score": e.score, "start": e.start, "end": e.end, "text": e.text}
            for e in r.entities
        ]
        for r in resp.results
    ]
    if args.json:
        emit_json({"executor": resp.executor, "results": results})
        return 0
    print(f"ran on {resp.executor}")
    for text, found in zip(args.texts, results):
        spans = "  ".join(f"{e['text']!r}={e['label']} [{e['start']}:{e['end']}]" for e in found)
        print(f"{_short(text)}: {spans or '(no entities)'}")
    return 0


def _short(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


_HANDLERS = {"embed": _embed, "classify": _classify, "tag": _tag}
