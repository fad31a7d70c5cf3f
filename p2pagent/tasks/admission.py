"""The door of the task capability: what a ``Submit``, ``SubmitAndWait`` or ``Infer`` must
pass before anything is queued or journaled.

Work that cannot run is refused at once, not accepted, journaled and failed later: a model
that no node serves and the registry does not list is NOT_FOUND, a malformed model name is
INVALID_ARGUMENT, inputs over ``tasks.max_payload_bytes`` are INVALID_ARGUMENT naming the
knob. One caller identity may hold at most ``tasks.max_queued_per_identity`` unfinished tasks
and ``tasks.max_queued_bytes_per_identity`` bytes of their inputs at a node; more is
RESOURCE_EXHAUSTED with a retry-after hint, and so is a submission over
``tasks.submit_rate_per_identity``.

Pure: no clock, no I/O; the API layer passes in what the node knows (``ModelSources``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from p2pagent.errors import InvalidArgument, NotFound, ResourceExhausted, quoted
from p2pagent.models.manifest import check_model_name
from p2pagent.tasks.config import TasksConfig
from p2pagent.transport.ratelimit import PerIdentityLimiter

#: Most input tensors one request may carry (each is a message to decode and a batch part).
MAX_INPUT_TENSORS = 1024
#: Most output tensors one task result may carry.
MAX_OUTPUT_TENSORS = 1024
#: Room on top of ``max_payload_bytes`` for the rest of a request (names, shapes, model name).
REQUEST_OVERHEAD_BYTES = 64 * 1024


def request_limit(cfg: TasksConfig) -> int:
    """Most bytes a whole Submit/Infer/Assign message may have, checked before decoding."""
    return cfg.max_payload_bytes + REQUEST_OVERHEAD_BYTES


def result_limit(cfg: TasksConfig) -> int:
    """Most bytes a whole ``Peer.Complete`` message (one result) may have, checked before
    decoding."""
    return cfg.max_result_bytes + REQUEST_OVERHEAD_BYTES


def too_many_tensors(count: int, bound: int, what: str) -> str | None:
    """Why a message with ``count`` (at least) tensors in ``what`` is refused, or None."""
    if count <= bound:
        return None
    return f"the request has more than {bound} {what} tensors; at most {bound} are accepted"


def check_result(count: int, result_bytes: int, cfg: TasksConfig) -> None:
    """Refuses a task's outputs with too many tensors or bytes (InvalidArgument: running it
    again elsewhere would give the same answer)."""
    if count > MAX_OUTPUT_TENSORS:
        raise InvalidArgument(
            f"the model returned {count} output tensors; a task result may carry at most "
            f"{MAX_OUTPUT_TENSORS}"
        )
    if result_bytes > cfg.max_result_bytes:
        raise InvalidArgument(
            f"the outputs are {result_bytes} bytes, over the {cfg.max_result_bytes} a task "
            "result may carry (tasks.max_result_bytes); send fewer rows per task or raise the "
            "setting on every node"
        )


def check_inputs(count: int, payload_bytes: int, cfg: TasksConfig) -> None:
    """Refuses a request with too many input tensors or too many bytes of them."""
    if count > MAX_INPUT_TENSORS:
        raise InvalidArgument(
            f"the request has {count} input tensors; at most {MAX_INPUT_TENSORS} are accepted"
        )
    if payload_bytes > cfg.max_payload_bytes:
        raise InvalidArgument(
            f"the inputs are {payload_bytes} bytes, over the {cfg.max_payload_bytes} a task may "
            "carry (tasks.max_payload_bytes); send smaller inputs or raise the setting on "
            "every node"
        )


@dataclass(frozen=True)
class ModelSources:
    """Where a model may come from, as this node knows it now."""

    #: Names this node can run now (served from a local file, or a held version).
    here: Collection[str]
    #: Names that peers report they can run (their load reports).
    peers: Collection[str]
    #: Whether the replicated model registry lists a version of the name.
    published: Callable[[str], bool]


def check_model(name: str, sources: ModelSources) -> str:
    """Returns ``name`` when some node serves it or the registry lists it; refuses it with
    INVALID_ARGUMENT when it is not a usable model name, NOT_FOUND when nothing has it."""
    if not name:
        raise InvalidArgument("the request names no model: set model to the model to run")
    check_model_name(name)
    if name in sources.here or name in sources.peers or sources.published(name):
        return name
    raise NotFound(
        f"model {quoted(name)} is not served by any node and not published; "
        "p2pagentctl models ls lists the models there are"
    )


def retry_after_s(backlog_s: float, cfg: TasksConfig) -> float:
    """When to come back after a quota refusal: once the queued work ahead may have run
    (within ``tasks.retry_after_min_s`` and ``tasks.retry_after_max_s``)."""
    return min(cfg.retry_after_max_s, max(cfg.retry_after_min_s, backlog_s))


class IdentityQuotas:
    """Unfinished tasks and their input bytes per caller identity, at one node, and the rate
    of its submissions.

    ``admit`` counts a task against its owner (or refuses it); ``release`` uncounts it when
    its result has been delivered. Tasks read back from the journal after a restart have no
    owner and count against nobody.
    """

    def __init__(
        self,
        max_tasks: int,
        max_bytes: int,
        submit_rate: float = 0.0,
        cfg: TasksConfig | None = None,
    ) -> None:
        #: Read for the retry-after bounds only; the quotas are the arguments.
        self.cfg = cfg or TasksConfig()
        self.max_tasks = max_tasks
        self.max_bytes = max_bytes
        self.submit_rate = submit_rate
        self._rate = (
            PerIdentityLimiter(submit_rate, burst=2 * submit_rate) if submit_rate > 0 else None
        )
        #: owner -> (tasks, bytes)
        self._usage: dict[str, tuple[int, int]] = {}
        #: task id -> (owner, bytes)
        self._tasks: dict[str, tuple[str, int]] = {}

    @classmethod
    def from_config(cls, cfg: TasksConfig) -> IdentityQuotas:
        """The quotas and hints of the ``[tasks]`` section."""
        return cls(
            cfg.max_queued_per_identity,
            cfg.max_queued_bytes_per_identity,
            cfg.submit_rate_per_identity,
            cfg,
        )

    def usage(self, owner: str) -> tuple[int, int]:
        return self._usage.get(owner, (0, 0))

    def admit(
        self, owner: str, task_id: str, nbytes: int, backlog_s: float, now: float | None = None
    ) -> None:
        """Counts the task against ``owner``; ResourceExhausted (with a retry-after hint from
        the node's ``backlog_s``) when it would go over either quota. With ``now`` (a
        submission, journaled) the submission rate is checked first."""
        if not owner:
            return
        if now is not None and self._rate is not None and not self._rate.allow(owner, now):
            raise ResourceExhausted(
                f"{owner} submits faster than the {self.submit_rate:g} tasks/s one identity "
                "may (tasks.submit_rate_per_identity); retry after the time this answer gives",
                retry_after_s=self._rate.retry_after(owner, now),
            )
        tasks, held = self.usage(owner)
        if tasks + 1 > self.max_tasks:
            raise ResourceExhausted(
                f"{owner} already has {tasks} unfinished tasks here, the most one identity "
                "may have (tasks.max_queued_per_identity); wait for results, then retry",
                retry_after_s=retry_after_s(backlog_s, self.cfg),
            )
        if held + nbytes > self.max_bytes:
            raise ResourceExhausted(
                f"{owner}'s unfinished tasks here hold {held} bytes of inputs; {nbytes} more "
                f"would pass the {self.max_bytes} one identity may hold "
                "(tasks.max_queued_bytes_per_identity); wait for results, then retry",
                retry_after_s=retry_after_s(backlog_s, self.cfg),
            )
        self._usage[owner] = (tasks + 1, held + nbytes)
        self._tasks[task_id] = (owner, nbytes)

    def release(self, task_id: str) -> None:
        """Uncounts a finished task (nothing when it was not counted)."""
        entry = self._tasks.pop(task_id, None)
        if entry is None:
            return
        owner, nbytes = entry
        tasks, held = self._usage[owner]
        if tasks <= 1:
            del self._usage[owner]
        else:
            self._usage[owner] = (tasks - 1, held - nbytes)
