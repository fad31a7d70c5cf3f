"""Training RPCs: ``Agent.Average`` / ``Agent.TrainStatus`` (the user's loop and operators)
and ``Peer.AverageParts`` (node-to-node parts). Thin: decode, call the driver, encode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from p2pagent._proto import agent_pb2, peer_pb2
from p2pagent.errors import InvalidArgument, NotFound, quoted
from p2pagent.training.driver import TrainingDriver
from p2pagent.training.reduce import weight_problem
from p2pagent.training.wire import read_average_request, read_part, vector_chunks
from p2pagent.transport.guard import caller_identity

if TYPE_CHECKING:
    from p2pagent.models.driver import ModelsDriver

Ctx = grpc.aio.ServicerContext[Any, Any]
#: Seconds ``Average`` waits for ``min_members`` to show up when the call has no deadline.
DEFAULT_MEMBER_WAIT_S = 60.0


class TrainingNode(Protocol):
    """What the training handlers need of the node."""

    @property
    def training(self) -> TrainingDriver: ...

    @property
    def models(self) -> ModelsDriver: ...


class _TrainingAccess:
    _training_node: TrainingNode

    def _training(self) -> TrainingDriver:
        return self._training_node.training


class TrainingAgentApi(_TrainingAccess):
    async def Average(
        self, request_iterator: AsyncIterator[agent_pb2.AverageRequest], context: Ctx
    ) -> AsyncIterator[agent_pb2.AverageResponse]:
        driver = self._training()
        header, vector = await read_average_request(
            request_iterator, driver.config.max_parameter_bytes
        )
        if not header.run:
            raise InvalidArgument("AverageRequest.run is empty: name the training run")
        if not header.spec:
            raise InvalidArgument(
                "AverageRequest.spec is empty: pass the fingerprint of the parameters' "
                "names, shapes and dtypes (p2pagent.training.api.fingerprint)"
            )
        if vector.shape[0] == 0:
            raise InvalidArgument("no parameters to average: AverageRequest.length is 0")
        import numpy as np  # here: only a node asked to average needs numpy

        if not np.isfinite(vector).all():
            raise InvalidArgument(
                f"the parameters sent for run {quoted(header.run)} hold NaN or infinite "
                "values; fix the training step before averaging"
            )
        problem = weight_problem(header.sample_count, driver.config)
        if problem is not None:
            raise InvalidArgument(f"AverageRequest.sample_count: {problem}")
        remaining = context.time_remaining()
        wait = DEFAULT_MEMBER_WAIT_S if remaining is None else remaining
        if header.model:
            driver.join(header.run, header.spec, int(vector.shape[0])).model = header.model
        done = await driver.average(
            header.run,
            header.spec,
            vector,
            header.sample_count,
            max(1, header.min_members),
            wait,
        )
        first = True
        for chunk in vector_chunks(done.vector):
            if first:
                first = False
                yield agent_pb2.AverageResponse(
                    round=done.round_no,
                    group=list(done.group),
                    complete=done.complete,
                    seconds=done.finished - done.started,
                    data=chunk,
                )
            else:
                yield agent_pb2.AverageResponse(data=chunk)

    async def TrainStatus(
        self, request: agent_pb2.TrainStatusRequest, context: Ctx
    ) -> agent_pb2.TrainStatusResponse:
        driver = self._training()
        out = agent_pb2.TrainStatusResponse()
        for name, run in sorted(driver.runs.items()):
            if request.run and request.run != name:
                continue
            st = run.stats
            out.runs.append(
                agent_pb2.TrainRunStatus(
                    run=name,
                    rounds=st.rounds,
                    last_round=max(st.last_round, 0),
                    members=driver.participants(name),
                    last_round_s=st.last_round_s,
                    phase_timeout_s=st.phase_timeout_s,
                    bytes_sent=st.bytes_sent,
                    bytes_received=st.bytes_received,
                    refused=st.refused,
                    incomplete_rounds=st.incomplete_rounds,
                    last_published=self._latest_version(run.model),
                )
            )
        if request.run and not out.runs:
            raise NotFound(f"this node takes no part in training run {quoted(request.run)}")
        return out

    def _latest_version(self, model: str) -> str:
        models = self._training_node.models
        if not model:
            return ""
        entries = models.entries_safe(model)
        newest = max(entries, key=lambda e: (e.manifest.version, e.manifest_id), default=None)
        return newest.manifest_id if newest is not None else ""


class TrainingPeerApi(_TrainingAccess):
    async def AverageParts(
        self, request_iterator: AsyncIterator[peer_pb2.AveragePartsRequest], context: Ctx
    ) -> peer_pb2.AveragePartsResponse:
        driver = self._training()
        sender = caller_identity(context).name
        part = await read_part(request_iterator, sender, driver.config.max_parameter_bytes)
        driver.receive(part, part.nbytes)
        return peer_pb2.AveragePartsResponse()
