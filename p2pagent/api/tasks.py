"""Tasks RPCs: the ``Agent`` handlers (public) and the ``Peer`` handlers (node-to-node) of
the tasks capability. Thin: decode, call the driver, encode; errors are `p2pagent.errors`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from p2pagent._proto import agent_pb2, common_pb2, peer_pb2
from p2pagent.errors import InvalidArgument, Unavailable
from p2pagent.models.loadable import spec_of
from p2pagent.tasks import admission
from p2pagent.tasks.config import MAX_LIST_TASKS
from p2pagent.tasks.driver import TasksDriver
from p2pagent.tasks.results import TaskResult
from p2pagent.tasks.wire import fill_result_event, input_bytes
from p2pagent.transport.guard import answers_last, caller_identity, stream_writer
from p2pagent.transport.multiplexed import Send, StreamProtocol, serve
from p2pagent.transport.request_window import RequestWindow

if TYPE_CHECKING:
    from p2pagent.config import Config
    from p2pagent.inference.cache import ModelCache
    from p2pagent.inference.spec import ModelSpec
    from p2pagent.models.driver import ModelsDriver


class TasksNode(Protocol):
    """What the task handlers need of the node."""

    @property
    def config(self) -> Config: ...

    @property
    def tasks(self) -> TasksDriver: ...

    @property
    def models(self) -> ModelsDriver: ...

    @property
    def models_cache(self) -> ModelCache: ...


Ctx = grpc.aio.ServicerContext[Any, Any]


#: The requests that carry a task's model and inputs (the stream ones repeat the unary ones'
#: fields under the same numbers).
TaskRequest = (
    agent_pb2.SubmitRequest
    | agent_pb2.SubmitAndWaitRequest
    | agent_pb2.InferRequest
    | agent_pb2.SubmitStreamRequest
    | agent_pb2.InferStreamRequest
)


def admit(node: TasksNode, request: TaskRequest) -> Any:
    """The door of Submit, SubmitAndWait and Infer: refuses at once what could never run
    (an unknown or malformed model name, a pinned version the registry does not list, too
    many or too big inputs, inputs that contradict the model's metadata), before anything
    is queued or journaled. Returns the decoded inputs (bound, in port order, for a model served
    here)."""
    from p2pagent.inference import tensors  # numpy: only nodes that run models load it

    admission.check_inputs(len(request.inputs), input_bytes(request.inputs), node.config.tasks)
    served = not request.model_version and node.models_cache.serves(request.model)
    if served:
        # The common case, on every request: a model served here (so a valid name) at its
        # newest version. Skips building the sets of every source's names.
        spec: ModelSpec | None = node.models_cache.spec(request.model)
    else:
        admission.check_model(request.model, model_sources(node))
        spec = expected_spec(node, request.model, request.model_version)
    inputs = tensors.many_decode(request.inputs, node.config.inference.max_tensor_elements)
    if spec is not None:
        bound = spec.bind_inputs(request.model, inputs)
        if served:  # the engine runs this very spec: it takes them without binding again
            return bound
    return inputs


def expected_spec(node: TasksNode, name: str, version: str) -> ModelSpec | None:
    """The metadata a task of ``name`` (at ``version``) will run with, as this node knows
    it: the pinned version's (NotFound when the registry has no such version), the model it
    serves under that name, or the newest published version's. None when only a peer serves
    it: the node that runs it checks the inputs then."""
    if version:
        return node.models.loadable.pinned(name, version)[1]
    cache = node.models_cache
    if cache.serves(name):
        return cache.spec(name)
    versions = node.models.entries_safe(name)
    return spec_of(versions[-1].manifest) if versions else None


def model_sources(node: TasksNode) -> admission.ModelSources:
    """The models this node knows of: its own, its live peers' (their last load hints, fresh
    or not: an idle peer stops gossiping) and the replicated registry's."""
    tasks, models = node.tasks, node.models
    peers = tasks.peer_models()
    return admission.ModelSources(
        here=set(node.models_cache.names()),
        peers=peers,
        published=lambda name: bool(models.entries(name)),
    )


#: The kinds of a task's last event (its result).
_FINAL = (agent_pb2.TaskEvent.KIND_DONE, agent_pb2.TaskEvent.KIND_FAILED)


#: A response carrying one event.
R = TypeVar("R", agent_pb2.WaitResponse, agent_pb2.SubmitAndWaitResponse)


async def _last_event(events: AsyncIterator[agent_pb2.TaskEvent], response: Callable[..., R]) -> R:
    """Writes a task's events until its result, which it returns: the stream's last message,
    sent with the call's status (``answers_last``)."""
    write = stream_writer()
    async for event in events:
        answer = response(event=event)
        if event.kind in _FINAL:
            return answer
        await write(answer)
    # A task's events end with its result (or an error): a relayed stream cut short.
    raise Unavailable("the task's events ended before its result; Wait for it again")


class _TasksAccess:
    _tasks_node: TasksNode

    def _tasks(self) -> TasksDriver:
        driver = self._tasks_node.tasks
        if not driver.loaded:
            # Answering now could call a journaled task unknown (NOT_FOUND) to a client that
            # came back right after a restart.
            raise Unavailable("the task journal is still loading; retry shortly")
        return driver


class TasksAgentApi(_TasksAccess):
    async def _submit(
        self,
        request: agent_pb2.SubmitRequest
        | agent_pb2.SubmitAndWaitRequest
        | agent_pb2.SubmitStreamRequest,
        owner: str,
        with_result: bool = False,
    ) -> str:
        # Validates the tensors here, so a bad one is refused before it is journaled.
        admit(self._tasks_node, request)
        return await self._tasks().submit(request, owner, with_result)

    async def Submit(
        self, request: agent_pb2.SubmitRequest, context: Ctx
    ) -> agent_pb2.SubmitResponse:
        owner = caller_identity(context).uri
        return agent_pb2.SubmitResponse(task_id=await self._submit(request, owner))

    @answers_last
    async def Wait(self, request: agent_pb2.WaitRequest, context: Ctx) -> agent_pb2.WaitResponse:
        if not request.task_id:
            raise InvalidArgument("WaitRequest.task_id is empty: pass the id Submit returned")
        return await _last_event(self._tasks().wait(request.task_id), agent_pb2.WaitResponse)

    @answers_last
    async def SubmitAndWait(
        self, request: agent_pb2.SubmitAndWaitRequest, context: Ctx
    ) -> agent_pb2.SubmitAndWaitResponse:
        owner = caller_identity(context).uri
        inputs = admit(self._tasks_node, request)  # a bad tensor is refused before anything
        if request.model_version or not self._tasks_node.models_cache.serves(request.model):
            inputs = None  # not run here at once: the scheduler decides where it runs
        outcome = await self._tasks().submit_and_wait(request, inputs, owner)
        if isinstance(outcome, TaskResult):  # run at once: its result is the one event
            response = agent_pb2.SubmitAndWaitResponse()
            fill_result_event(response.event, outcome.task_id, outcome)
            return response
        return await _last_event(outcome, agent_pb2.SubmitAndWaitResponse)

    async def SubmitStream(
        self, request_iterator: AsyncIterator[agent_pb2.SubmitStreamRequest], context: Ctx
    ) -> AsyncIterator[agent_pb2.SubmitStreamResponse]:
        owner = caller_identity(context).uri
        node_name = self._tasks_node.tasks.name
        #: Requests whose task is accepted but not journaled yet (request id -> task id):
        #: the client does not know the task's id, so a cancel must reach the task itself.
        unjournaled: dict[int, str] = {}

        async def run(
            request: agent_pb2.SubmitStreamRequest, send: Send
        ) -> agent_pb2.SubmitStreamResponse:
            tasks = self._tasks()
            admit(self._tasks_node, request)  # a bad tensor is refused before it is journaled
            task_id, journaled = tasks.accept(request, owner, with_result=True)
            unjournaled[request.request_id] = task_id
            try:
                await tasks.journaled(task_id, journaled)
            finally:
                del unjournaled[request.request_id]
            # Journaled: the client learns the id now, so it can Wait after a lost stream.
            queued = agent_pb2.TaskEvent(
                task_id=task_id, kind=agent_pb2.TaskEvent.KIND_QUEUED, node=node_name,
                at_unix=time.time(),
            )  # fmt: skip
            send(agent_pb2.SubmitStreamResponse(request_id=request.request_id, event=queued))
            final = queued
            async for event in tasks.wait(task_id):
                final = event
            # Cancelled before it was journaled: this final event says what the cancel did
            # (FAILED with CANCELLED, or DONE when the task had finished first).
            return agent_pb2.SubmitStreamResponse(request_id=request.request_id, event=final)

        def on_cancel(request_id: int) -> bool:
            task_id = unjournaled.get(request_id)
            if task_id is None:
                return False  # the client knows the id: only the following stops
            # Failed CANCELLED unless finished (again: a no-op); the request runs on to tell
            # the client the id and what became of the task.
            self._tasks().cancel(
                task_id, f"request {request_id} was cancelled by the client on SubmitStream"
            )
            return True

        protocol = StreamProtocol(
            run=run,
            request_id=lambda r: r.request_id,
            cancel=lambda r: r.cancel,
            timeout_s=lambda r: None,  # a task's deadline is its deadline_s, kept by the core
            error_answer=lambda i, code, message: agent_pb2.SubmitStreamResponse(
                request_id=i, error_code=code, error_message=message
            ),
            on_cancel=on_cancel,
        )
        limit = self._tasks_node.config.transport.stream_max_in_flight
        window = RequestWindow(limit, "transport.stream_max_in_flight")
        async for answer in serve(request_iterator, protocol, window):
            yield answer

    async def ListTasks(
        self, request: agent_pb2.ListTasksRequest, context: Ctx
    ) -> agent_pb2.ListTasksResponse:
        limit = request.limit or 100
        if limit > MAX_LIST_TASKS:
            raise InvalidArgument(f"limit {limit} is over {MAX_LIST_TASKS}")
        return self._tasks().list_tasks(limit)


class TasksPeerApi(_TasksAccess):
    async def Steal(self, request: peer_pb2.StealRequest, context: Ctx) -> peer_pb2.StealResponse:
        return self._tasks().handle_steal(
            request, caller_identity(context).name, context.time_remaining()
        )

    async def Assign(
        self, request: peer_pb2.AssignRequest, context: Ctx
    ) -> peer_pb2.AssignResponse:
        return self._tasks().handle_assign(request)

    async def Complete(
        self, request: peer_pb2.CompleteRequest, context: Ctx
    ) -> peer_pb2.CompleteResponse:
        return await self._tasks().handle_complete(request, caller_identity(context).name)

    async def Load(self, request: common_pb2.Envelope, context: Ctx) -> common_pb2.Envelope:
        return self._tasks().handle_load(request, caller_identity(context).name)
