"""``p2pagentctl tasks submit|wait|ls``: the task lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from p2pagent._proto import agent_pb2
from p2pagent.cli import client
from p2pagent.cli.args import INT32, int_in, seconds
from p2pagent.cli.output import emit_json, key_values, table
from p2pagent.cli.tensors import describe, read_inputs
from p2pagent.client import Client
from p2pagent.tasks.config import MAX_LIST_TASKS

#: Most copies one ``tasks submit --count`` sends (a bound on an accidental flood).
MAX_COUNT = 1_000_000

KIND = {v: k.removeprefix("KIND_").lower() for k, v in agent_pb2.TaskEvent.Kind.items()}


def register(sub: Any) -> None:
    p = sub.add_parser("tasks", help="submit tasks, wait for results, list them")
    tsub = p.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = tsub.add_parser(name, help=help)
        client.add_connection_flags(c)
        c.add_argument("--json", action="store_true")
        return c

    submit = cmd("submit", "submit a task; prints its id")
    submit.add_argument("--model", required=True)
    submit.add_argument("--input", required=True, metavar="FILE", help=".npy or JSON input")
    submit.add_argument("--input-name", default="input")
    submit.add_argument("--priority", type=int_in(*INT32), default=0)
    submit.add_argument(
        "--deadline", type=seconds(zero=True), default=0.0, help="seconds from now (0: none)"
    )
    submit.add_argument("--count", type=int_in(1, MAX_COUNT), default=1, help="submit N copies")
    submit.add_argument("--wait", action="store_true", help="and follow each task until its result")
    submit.set_defaults(handler=_submit)

    wait = cmd("wait", "stream a task's events until its result")
    wait.add_argument("task_id")
    for c in (submit, wait):
        c.add_argument(
            "--follow",
            type=seconds(zero=True),
            default=60.0,
            metavar="S",
            help="keep asking this long while no node can answer, e.g. while the node that "
            "took the task restarts (default %(default)s)",
        )
    wait.set_defaults(handler=_wait)

    ls = cmd("ls", "tasks this node originated, and its queue counters")
    ls.add_argument("--limit", type=int_in(1, MAX_LIST_TASKS), default=20)
    ls.set_defaults(handler=_ls)


def event_doc(e: agent_pb2.TaskEvent) -> dict[str, Any]:
    doc: dict[str, Any] = {"task_id": e.task_id, "event": KIND.get(e.kind, "?"), "node": e.node}
    if e.kind == agent_pb2.TaskEvent.KIND_DONE:
        doc["outputs"] = [describe(t) for t in e.outputs]
    if e.kind == agent_pb2.TaskEvent.KIND_FAILED:
        doc["error"] = f"{e.error_code}: {e.error_message}"
    return doc


def _show(e: agent_pb2.TaskEvent, args: argparse.Namespace) -> dict[str, Any]:
    doc = event_doc(e)
    if not args.json:
        where = f" on {e.node}" if e.node else ""
        print(f"{e.task_id[:12]} {doc['event']}{where}", flush=True)
        if "error" in doc:
            print(f"  {doc['error']}")
    return doc


def _mesh(args: argparse.Namespace) -> Client:
    """The Python client over ``--target``'s nodes: a task is followed across a lost stream
    and a restart of the node that took it, and to another listed node."""
    return client.mesh(args, follow_s=getattr(args, "follow", 600.0))


async def _submit_and_wait(
    mesh: Client, req: agent_pb2.SubmitRequest, args: argparse.Namespace
) -> dict[str, Any]:
    """One task on one stream (`SubmitAndWait`): its id, then its events."""
    first = True

    def seen(e: agent_pb2.TaskEvent) -> None:
        nonlocal first
        if first and not args.json:
            print(e.task_id, flush=True)
        first = False
        _show(e, args)

    return event_doc(await mesh.follow(req, seen))


async def _submit(args: argparse.Namespace) -> int:
    inputs = read_inputs(args.input, args.input_name)
    req = agent_pb2.SubmitRequest(
        model=args.model, inputs=inputs, priority=args.priority, deadline_s=args.deadline
    )
    ids: list[str] = []
    results: list[dict[str, Any]] = []
    if args.wait:
        async with _mesh(args) as mesh:
            # Every copy is submitted at once, each followed on its own stream.
            follow = (_submit_and_wait(mesh, req, args) for _ in range(args.count))
            results = list(await asyncio.gather(*follow))
        ids = [r["task_id"] for r in results]
    else:
        async with _mesh(args) as mesh:
            for _ in range(args.count):
                ids.append((await mesh.call("Submit", req, repeatable=False)).task_id)
        if not args.json:
            for tid in ids:
                print(tid)
    if args.json:
        emit_json({"task_ids": ids, "results": results} if args.wait else {"task_ids": ids})
    return 1 if any(r.get("event") != "done" for r in results) else 0


async def _wait(args: argparse.Namespace) -> int:
    async with _mesh(args) as mesh:
        last = event_doc(await mesh.follow_task(args.task_id, lambda e: _show(e, args)))
    if args.json:
        emit_json(last)
    return 0 if last.get("event") == "done" else 1


async def _ls(args: argparse.Namespace) -> int:
    async with _mesh(args) as mesh:
        resp = await mesh.call(
            "ListTasks", agent_pb2.ListTasksRequest(limit=args.limit), repeatable=True
        )
    counters = {
        "queue_length": resp.queue_length,
        "running": resp.running,
        "completed": resp.completed,
        "stolen_in": resp.stolen_in,
        "stolen_out": resp.stolen_out,
    }
    rows = [
        {
            "task_id": t.task_id,
            "model": t.model,
            "state": t.state,
            "node": t.node,
            "age_s": round(time.time() - t.submitted_unix, 1),
        }
        for t in resp.tasks
    ]
    if args.json:
        emit_json({"counters": counters, "tasks": rows})
    else:
        print(key_values(counters))
        print()
        print(table(rows, ["task_id", "model", "state", "node", "age_s"]))
    return 0
