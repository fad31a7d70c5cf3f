"""Wire forms of the task cores' values: ``Task`` <-> ``peer_pb2.TaskSpec``, ``LoadReport`` <->
msgpack inside ``Envelope``, and error codes <-> `p2pagent.errors`.

Inputs and outputs stay in their protobuf form (``common_pb2.Tensor``) from the client to the
executor and back: the origin never decodes them except to validate a submission, so moving a
task costs no tensor copies. Nothing here unpickles; msgpack payloads are size-limited and
checked field by field before a ``LoadReport`` is built.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgpack  # type: ignore[import-untyped]

from p2pagent import errors
from p2pagent._proto import agent_pb2, common_pb2, peer_pb2
from p2pagent.errors import RemoteProtocolError
from p2pagent.inference.tensor_checks import check_wire
from p2pagent.tasks.admission import MAX_INPUT_TENSORS
from p2pagent.tasks.lifecycle import TaskEvent, TaskState
from p2pagent.tasks.load import LoadReport, ModelBacklog
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.spec import Task

if TYPE_CHECKING:
    from p2pagent.tasks.core import TaskNode

#: Version of the LoadReport payload; a node refuses versions it cannot read.
LOAD_VERSION = 1
#: Most models or task ids one report may list (a report is small by design).
MAX_LIST = 100_000
#: Most bytes of one report's payload, checked before it is decoded.
MAX_REPORT_BYTES = 4 << 20

Tensors = list[common_pb2.Tensor]


def input_bytes(inputs: Sequence[common_pb2.Tensor]) -> int:
    """The tensors' data bytes together (a loop, not ``sum`` over a generator: this runs a
    few times per request, mostly over one tensor)."""
    n = 0
    for t in inputs:
        n += len(t.data)
    return n


def task_to_spec(task: Task, with_inputs: bool = True) -> peer_pb2.TaskSpec:
    """``with_inputs=False``: without its input tensors (a finished task's journal row)."""
    inputs: Sequence[common_pb2.Tensor] = task.inputs or []  # type: ignore[assignment]
    return peer_pb2.TaskSpec(
        task_id=task.task_id,
        origin=task.origin,
        model=task.model,
        inputs=list(inputs) if with_inputs else [],
        priority=task.priority,
        deadline_unix=task.deadline,
        est_cost_s=task.est_cost_s,
        attempt=task.attempt,
        model_version=task.model_version,
    )


def task_from_spec(spec: peer_pb2.TaskSpec) -> Task:
    """A task received from a peer or read back from the journal; InvalidArgument if bad.

    Its input tensors are passed on undecoded, but each one's declared dtype and shape is
    checked against its bytes first (``tensor_checks.check_wire``): a task a peer hands over
    (Assign, Steal) may not declare more than it carries."""
    if len(spec.inputs) > MAX_INPUT_TENSORS:
        raise errors.InvalidArgument(
            f"task has {len(spec.inputs)} input tensors; at most {MAX_INPUT_TENSORS}"
        )
    inputs = list(spec.inputs)
    for t in inputs:
        check_wire(t)
    return Task(
        task_id=spec.task_id,
        origin=spec.origin,
        model=spec.model,
        est_cost_s=max(0.0, spec.est_cost_s),
        priority=spec.priority,
        deadline=max(0.0, spec.deadline_unix),
        attempt=spec.attempt,
        model_version=spec.model_version,
        input_bytes=input_bytes(inputs),
        inputs=inputs,
    )


def tasks_or_errors(specs: Sequence[peer_pb2.TaskSpec]) -> list[Task | errors.P2PAgentError]:
    """The tasks of a ``StealResponse``, each one that does not decode as its error (the
    others are still taken: the bad one's origin re-queues it when its lease ends)."""
    out: list[Task | errors.P2PAgentError] = []
    for spec in specs:
        try:
            out.append(task_from_spec(spec))
        except errors.P2PAgentError as e:
            out.append(e)
    return out


def checked_result(r: peer_pb2.CompleteRequest) -> peer_pb2.CompleteRequest:
    """A result from an executor, its outputs checked against their bytes like any tensor
    received (``tensor_checks.check_wire``): one declaring more than it carries becomes a failed
    result saying so, rather than reaching the client (and the executor is acknowledged, so
    it stops sending it)."""
    if not r.ok:
        return r
    try:
        for t in r.outputs:
            check_wire(t)
    except errors.InvalidArgument as e:
        return peer_pb2.CompleteRequest(
            task_id=r.task_id, executor=r.executor, attempt=r.attempt, ok=False,
            error_code="INTERNAL", error_message=f"{r.executor} returned a malformed output: {e}",
            compute_s=r.compute_s,
        )  # fmt: skip
    return r


def result_to_proto(r: TaskResult) -> peer_pb2.CompleteRequest:
    return peer_pb2.CompleteRequest(
        task_id=r.task_id, executor=r.executor, attempt=r.attempt, ok=r.ok,
        outputs=list(r.outputs), error_code=r.error_code, error_message=r.error_message,
        compute_s=r.compute_s,
    )  # fmt: skip


def result_from_proto(r: peer_pb2.CompleteRequest) -> TaskResult:
    """A result as the cores take it (check a peer's first with ``checked_result``)."""
    return TaskResult(
        r.task_id, r.attempt, r.executor, r.ok, tuple(r.outputs) if r.ok else (),
        r.error_code, r.error_message, r.compute_s,
    )  # fmt: skip


# ---- load reports ----------------------------------------------------------------------------


def encode_report(report: LoadReport) -> common_pb2.Envelope:
    body = {
        "node": report.node,
        "seq": report.seq,
        "backlog_s": report.backlog_s,
        "queue_len": report.queue_len,
        "running": report.running,
        "capacity": report.capacity,
        "speed": report.speed,
        "models": sorted(report.models),
        "queued": [[m.model, m.count, m.cost_s] for m in report.queued],
        "held": sorted(report.held),
        "running_ids": sorted(report.running_ids),
    }
    payload: bytes = msgpack.packb(body, use_bin_type=True)
    return common_pb2.Envelope(version=LOAD_VERSION, payload=payload)


def decode_report(env: common_pb2.Envelope) -> LoadReport:
    """Raises RemoteProtocolError for a version we cannot read or a malformed payload."""
    if env.version != LOAD_VERSION:
        raise RemoteProtocolError(
            f"load report version {env.version} is not supported (this node reads "
            f"{LOAD_VERSION}); upgrade the older node"
        )
    if len(env.payload) > MAX_REPORT_BYTES:
        raise RemoteProtocolError(
            f"load report of {len(env.payload)} bytes is over the {MAX_REPORT_BYTES} allowed"
        )
    try:
        body = msgpack.unpackb(env.payload, raw=False, strict_map_key=True, max_array_len=MAX_LIST)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise RemoteProtocolError(f"load report is not msgpack: {type(e).__name__}") from None
    try:
        return _report(body)
    except (KeyError, TypeError, ValueError) as e:
        error = RemoteProtocolError(f"malformed load report: {type(e).__name__}: {e}")
    # Raised outside the handler, so that no traceback keeps the decoded payload alive.
    del body
    raise error


def _report(body: Any) -> LoadReport:
    """A LoadReport from a decoded payload; KeyError, TypeError or ValueError if malformed."""
    if not isinstance(body, dict):
        raise TypeError("not a map")
    queued = tuple(ModelBacklog(_str(m), _int(n), _num(c)) for m, n, c in _list(body["queued"]))
    return LoadReport(
        node=_str(body["node"]),
        seq=_int(body["seq"]),
        backlog_s=_num(body["backlog_s"]),
        queue_len=_int(body["queue_len"]),
        running=_int(body["running"]),
        capacity=_int(body["capacity"]),
        speed=_num(body["speed"]),
        models=frozenset(_str(m) for m in _list(body["models"])),
        queued=queued,
        held=frozenset(_str(t) for t in _list(body["held"])),
        running_ids=frozenset(_str(t) for t in _list(body["running_ids"])),
    )


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise TypeError(f"expected a non-negative integer, got {errors.quoted(v)}")
    return v


def _num(v: Any) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v < float("inf"):
        raise TypeError(f"expected a non-negative number, got {errors.quoted(v)}")
    return float(v)


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list, got {type(v).__name__}")
    return v


# ---- errors ----------------------------------------------------------------------------------


def error_code(exc: BaseException) -> str:
    """The status name a task failure carries (``CompleteRequest.error_code``)."""
    return exc.code if isinstance(exc, errors.P2PAgentError) else "INTERNAL"


def error_from_code(code: str, message: str) -> errors.P2PAgentError:
    """The error to raise for a failed task's code (Infer re-raises what the executor hit)."""
    return errors.error_for_code(code, message)


# ---- task events for Agent.Wait ----

_KIND = {
    TaskState.QUEUED: agent_pb2.TaskEvent.KIND_QUEUED,
    TaskState.RUNNING: agent_pb2.TaskEvent.KIND_RUNNING,
    TaskState.DONE: agent_pb2.TaskEvent.KIND_DONE,
    TaskState.FAILED: agent_pb2.TaskEvent.KIND_FAILED,
}


def event_proto(e: TaskEvent) -> agent_pb2.TaskEvent:
    return agent_pb2.TaskEvent(
        task_id=e.task_id,
        kind=_KIND[e.state],
        node=e.node,
        at_unix=e.at,
        error_code=e.error_code,
        error_message=e.error_message,
    )


def result_event(task_id: str, r: TaskResult) -> agent_pb2.TaskEvent:
    event = agent_pb2.TaskEvent()
    fill_result_event(event, task_id, r)
    return event


def fill_result_event(event: agent_pb2.TaskEvent, task_id: str, r: TaskResult) -> None:
    """Writes the result event of ``r`` into ``event``, an empty one (a response's own field:
    a message assigned to another one's field is copied, outputs and all)."""
    event.task_id = task_id
    event.kind = agent_pb2.TaskEvent.KIND_DONE if r.ok else agent_pb2.TaskEvent.KIND_FAILED
    event.node = r.executor
    event.at_unix = time.time()
    if r.ok:
        event.outputs.extend(r.outputs)
    if r.error_code or r.error_message:
        event.error_code = r.error_code
        event.error_message = r.error_message


def task_list(
    core: TaskNode,
    submitted_at: dict[str, tuple[float, str]],
    results: dict[str, TaskResult],
    limit: int,
) -> agent_pb2.ListTasksResponse:
    """``ListTasks``: the ``limit`` newest tasks of this origin (``submitted_at``: each one's
    submission time and model) with where each is, and the node's queue counters."""
    infos: list[agent_pb2.TaskInfo] = []
    newest = sorted(submitted_at.items(), key=lambda kv: kv[1][0], reverse=True)
    for task_id, (submitted, model) in newest[:limit]:
        result = results.get(task_id)
        where = core.leases.where(task_id)
        if result is not None:
            state, node = ("done" if result.ok else "failed"), result.executor
        elif where is not None:
            state, node = ("running" if where.running else "queued"), where.holder
        else:
            state, node = "unknown", ""
        infos.append(
            agent_pb2.TaskInfo(
                task_id=task_id, model=model, state=state, node=node, submitted_unix=submitted
            )
        )
    return agent_pb2.ListTasksResponse(
        tasks=infos,
        queue_length=core.queue.n_queued,
        running=core.running,
        completed=core.stats.completed,
        stolen_in=core.stats.stolen_in,
        stolen_out=core.stats.stolen_out,
    )
