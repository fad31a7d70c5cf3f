"""What a user's training loop calls: average this node's parameters with the run's other
members every N steps, through the local daemon (the daemon does the networking with its own
node identity; the training data never leaves this process: only parameters go to the
daemon, and only parameter slices go on from there).

::

    stub = agent_pb2_grpc.AgentServiceStub(channel)   # a channel with this node's certificate
    mesh = MeshAverager(stub, "digits", every=20, min_members=4)
    for step, (x, y) in enumerate(batches):
        ...train one step...
        averaged = mesh.step(params, samples=len(x))   # None except every 20th step
        if averaged is not None:
            params = averaged.params

``params`` is a mapping of names to numpy arrays (a model's ``state_dict`` converted with
``.numpy()``); every member of a run must have the same names, shapes and dtypes (the
fingerprint travels with every part, and a mismatch is refused).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2pagent._proto import agent_pb2, agent_pb2_grpc
from p2pagent.errors import InvalidArgument
from p2pagent.training.privacy import DPConfig, privatize
from p2pagent.training.publish import PublishPlan, due, is_publisher
from p2pagent.training.publish import publish as publish_version
from p2pagent.training.wire import vector_chunks

Arrays = Mapping[str, npt.NDArray[np.generic]]


def fingerprint(params: Arrays) -> str:
    """Hex SHA-256 of the parameters' names, shapes and dtypes, in name order."""
    h = hashlib.sha256()
    for name in sorted(params):
        a = params[name]
        h.update(f"{name}\0{tuple(a.shape)}\0{a.dtype.str}\n".encode())
    return h.hexdigest()


def flatten(params: Arrays) -> npt.NDArray[np.float32]:
    """Every array, in name order, as one float32 vector."""
    for name, a in params.items():
        if not np.issubdtype(a.dtype, np.floating):
            raise InvalidArgument(
                f"parameter {name!r} has dtype {a.dtype}: only floating parameters can be "
                "averaged (leave counters and integer buffers out)"
            )
    if not params:
        raise InvalidArgument("no parameters to average")
    return np.concatenate(
        [np.asarray(params[n], dtype=np.float32).reshape(-1) for n in sorted(params)]
    )


def unflatten(vector: npt.NDArray[np.float32], like: Arrays) -> dict[str, npt.NDArray[np.generic]]:
    """The inverse of ``flatten``: arrays shaped and typed like ``like``."""
    out: dict[str, npt.NDArray[np.generic]] = {}
    at = 0
    for name in sorted(like):
        a = like[name]
        n = int(a.size)
        out[name] = vector[at : at + n].reshape(a.shape).astype(a.dtype)
        at += n
    if at != vector.shape[0]:
        raise InvalidArgument(f"averaged vector has {vector.shape[0]} values, expected {at}")
    return out


@dataclass(frozen=True)
class AverageResult:
    params: dict[str, npt.NDArray[np.generic]]
    round_no: int
    group: tuple[str, ...]
    #: False when a slice had no average (its owner and backup failed) and kept local values.
    complete: bool
    seconds: float


def _requests(
    run: str,
    spec: str,
    vector: npt.NDArray[np.float32],
    samples: float,
    min_members: int,
    model: str,
) -> Iterator[agent_pb2.AverageRequest]:
    first = True
    for chunk in vector_chunks(vector):
        if first:
            first = False
            yield agent_pb2.AverageRequest(
                run=run,
                sample_count=samples,
                spec=spec,
                length=int(vector.shape[0]),
                min_members=min_members,
                data=chunk,
                model=model,
            )
        else:
            yield agent_pb2.AverageRequest(data=chunk)


def average(
    stub: agent_pb2_grpc.AgentServiceStub,
    run: str,
    params: Arrays,
    samples: float,
    *,
    min_members: int = 1,
    timeout: float | None = None,
    model: str = "",
) -> AverageResult:
    """One averaging round of ``params`` (trained on ``samples`` samples) in ``run``;
    ``model``: the model the run publishes, shown by ``train status``."""
    vector = flatten(params)
    replies = stub.Average(
        _requests(run, fingerprint(params), vector, samples, min_members, model),
        timeout=timeout,
    )
    header: agent_pb2.AverageResponse | None = None
    buf = bytearray()
    for reply in replies:
        if header is None:
            header = reply
        buf += reply.data
    if header is None:
        raise InvalidArgument("the node answered Average with nothing")
    out = np.frombuffer(bytes(buf), dtype="<f4").astype(np.float32)
    return AverageResult(
        params=unflatten(out, params),
        round_no=header.round,
        group=tuple(header.group),
        complete=header.complete,
        seconds=header.seconds,
    )


class MeshAverager:
    """Averages every ``every`` calls of ``step``; counts the samples seen in between. The
    first round waits until ``min_members`` members carry the run. With a
    ``publish`` plan, the group's publisher (``publish.is_publisher``) publishes the averaged
    parameters every ``publish.every`` rounds."""

    def __init__(
        self,
        stub: agent_pb2_grpc.AgentServiceStub,
        run: str,
        *,
        every: int,
        min_members: int = 1,
        timeout: float | None = None,
        publish: PublishPlan | None = None,
        dp: DPConfig | None = None,
        seed: int | None = None,
    ) -> None:
        if every < 1:
            raise InvalidArgument("every must be at least 1 step")
        self.stub, self.run, self.every = stub, run, every
        self.min_members, self.timeout = min_members, timeout
        self.plan = publish
        self.node = stub.Status(agent_pb2.StatusRequest(), timeout=30).name if publish else ""
        self.steps = 0
        self.samples = 0.0
        self.rounds: list[AverageResult] = []
        self.published: list[agent_pb2.ModelVersion] = []
        #: Differential privacy of the update sent (None: parameters go as they are).
        self.dp = dp
        self._rng = np.random.default_rng(seed)
        self._start: npt.NDArray[np.float32] | None = None
        #: The update norms before clipping, one per round (with ``dp``).
        self.update_norms: list[float] = []
        #: Publishing runs beside the loop: a publish taking seconds must not make this
        #: member the straggler of the next round.
        self._publisher = ThreadPoolExecutor(1, thread_name_prefix="p2pagent-publish")
        self._pending: list[Future[agent_pb2.ModelVersion]] = []

    def step(self, params: Arrays, samples: float) -> AverageResult | None:
        self.steps += 1
        self.samples += samples
        if self.steps % self.every:
            return None
        sent = params
        if self.dp is not None:
            current = flatten(params)
            start = self._start if self._start is not None else current
            private, norm = privatize(current, start, self.dp, self._rng)
            self.update_norms.append(norm)
            sent = unflatten(private, params)
        result = average(
            self.stub,
            self.run,
            sent,
            self.samples,
            # Only the first round waits for the run to fill up: later, a member that died
            # must not stall the survivors (the rounds average it out).
            min_members=self.min_members if not self.rounds else 1,
            timeout=self.timeout,
            model=self.plan.model if self.plan is not None else "",
        )
        self.samples = 0.0
        self.rounds.append(result)
        if self.dp is not None:
            self._start = flatten(result.params)
        plan = self.plan
        if (
            plan is not None
            and result.complete
            and due(plan, result.round_no)
            and is_publisher(self.node, result.group)
        ):
            self._pending.append(
                self._publisher.submit(publish_version, self.stub, plan, result.params)
            )
        return result

    def close(self) -> list[agent_pb2.ModelVersion]:
        """Waits for the publishes still running (raising the first failure) and returns
        every version published."""
        pending, self._pending = self._pending, []
        try:
            for future in pending:
                self.published.append(future.result())
        finally:
            self._publisher.shutdown(wait=True)
        return self.published
