"""The inference engine: asyncio glue around the batching policy and the device workers.

One engine per node and device. ``infer`` validates a request against the model's metadata,
admits it to the pure ``BatchPolicy`` and waits; the engine feeds the policy the current
time whenever something changes (a request arrives, a batch finishes, a timer the policy
asked for fires) and hands the batches it forms to the workers:

- CPU: one worker thread stages and computes each batch (``pipeline_depth`` 1).
- CUDA: a staging thread concatenates into pinned memory and starts the copy to the device
  while the compute thread runs the previous batch (``pipeline_depth`` 2). Forward passes
  only ever run on the one compute thread.

A model that raises fails only the requests of that batch (Internal, with its message); the
engine goes on. Deadlines are absolute times on the engine's clock (``time.monotonic`` by
default): the gRPC layer passes ``clock() + context.time_remaining()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pagent.errors import DeadlineExceeded, Internal, P2PAgentError, Unavailable
from p2pagent.inference import device as devices
from p2pagent.inference.batching import Batch, BatchPolicy
from p2pagent.inference.cache import ModelCache
from p2pagent.inference.config import WORKER_MEMORY_HEADROOM, InferenceConfig
from p2pagent.inference.device import DeviceInfo
from p2pagent.inference.formats import LoadedModel
from p2pagent.inference.ragged_tensors import (
    check_max_length,
    pad_ragged,
    ragged_length,
    trim_ragged,
)
from p2pagent.inference.remote_model import RemoteModel
from p2pagent.inference.stats import ModelStats
from p2pagent.inference.tensors import HostTensor

if TYPE_CHECKING:
    from typing import TypeAlias

    import torch

    from p2pagent.inference.runner import BatchRunner
    from p2pagent.inference.spec import InputTensor

    Inputs: TypeAlias = Mapping[str, InputTensor] | Sequence[InputTensor]
    Outputs: TypeAlias = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Request:
    model: LoadedModel
    inputs: list[InputTensor]
    future: asyncio.Future[Outputs]


def resolve_config(config: InferenceConfig, device: DeviceInfo) -> InferenceConfig:
    """Fills the "auto" (0) fields for this device."""
    depth = config.pipeline_depth or (2 if device.is_cuda else 1)
    worker_depth = config.worker_pipeline_depth or 2
    threads = devices.intra_op_threads(config.intra_op_threads, device)
    memory = config.worker_memory_bytes
    if memory == 0:
        memory = -1 if device.is_cuda else config.cache_budget_bytes + WORKER_MEMORY_HEADROOM
    return dataclasses.replace(
        config, pipeline_depth=depth, worker_pipeline_depth=worker_depth,
        intra_op_threads=threads, worker_memory_bytes=memory,
    )  # fmt: skip


class InferenceEngine:
    def __init__(
        self,
        cache: ModelCache,
        config: InferenceConfig,
        device: DeviceInfo,
        *,
        clock: Callable[[], float] = time.monotonic,
        set_threads: bool = True,
    ) -> None:
        self.config = resolve_config(config.validate(), device)
        self.device = device
        self.cache = cache
        self._clock = clock
        self._set_threads = set_threads
        self._policy = BatchPolicy(self.config)
        # Made on the first batch, in a worker thread: it imports torch, which a node that
        # never runs a model should not pay for (see device.py).
        self._runner: BatchRunner | None = None
        self._runner_lock = threading.Lock()
        # The thread count is also set inside each worker: OpenMP keeps it per thread, and a
        # worker left at the default would oversubscribe the cores the event loop needs.
        threads = self.config.intra_op_threads

        def init() -> None:
            if set_threads:
                devices.configure_threads(threads)

        self._compute = ThreadPoolExecutor(1, thread_name_prefix="infer-compute", initializer=init)
        self._stage = (
            ThreadPoolExecutor(1, thread_name_prefix="infer-stage", initializer=init)
            if device.is_cuda
            else None
        )
        self._waiting: dict[int, _Request] = {}
        #: Batches handed to the workers and not yet completed on the loop.
        self._in_flight = 0
        self._drained: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self._closed = False

    # ---- public API ----------------------------------------------------------------------

    async def infer(
        self, model_name: str, inputs: Inputs, deadline: float | None = None
    ) -> Outputs:
        """Runs one request, batched with others; returns outputs by port name.

        Raises NotFound (unknown model), InvalidArgument (inputs do not match the model's
        metadata), ResourceExhausted (queue full), DeadlineExceeded, Internal (the model
        failed on this request's batch) and Unavailable (engine closed).
        """
        if self._closed:
            raise Unavailable("the inference engine is shut down")
        now = self._clock()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"request for model {model_name!r} arrived past its deadline")
        # A resident model is taken without a coroutine: this path runs once per request.
        model = self.cache.resident_model(model_name) or await self.cache.get(model_name)
        ordered = model.spec.bind_inputs(model_name, inputs)
        batchable = model.spec.batchable
        # Requests share a batch only with the same loaded model and concatenable inputs;
        # ragged ones (token ids) of any length: the runner pads them to the batch's length.
        length = 0
        if model.text is not None:  # token ids for a folder: refused past its maximum
            check_max_length(model_name, ordered, model.text.tokenizer.max_length)
        if model.ragged is not None and self.config.ragged_batching:
            length = ragged_length(model_name, ordered)
            group: Hashable = (id(model), "ragged")
        else:
            group = (id(model), *[_layout(t) for t in ordered])
        rid = self._policy.submit(
            model_name,
            int(ordered[0].shape[0]) if batchable else 1,
            now,
            group=group,
            deadline=deadline,
            batchable=batchable,
            length=length,
            worker=isinstance(model.fn, RemoteModel),
        )
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._waiting[rid] = _Request(model, ordered, future)
        # A request joining a batch the policy holds to a time changes nothing before then
        # (many callers: one poll per arrival was most of the policy's work per request).
        if self._timer is None or not self._policy.quiet(rid):
            self._schedule_pump()
        try:
            return await future
        except asyncio.CancelledError:
            if self._policy.cancel(rid):
                self._waiting.pop(rid, None)
            raise

    def seconds_per_row(self, model: str) -> float | None:
        """Measured service time per row of ``model`` (None before its first batch)."""
        return self._policy.seconds_per_row(model)

    def seconds_per_token(self, model: str) -> float | None:
        """Measured service time per real token of ``model`` (per row for a model without
        sequences): what a task of token ids costs, by its tokens."""
        return self._policy.seconds_per_token(model)

    def batching_measured(self, model: str) -> bool:
        """Batches of ``model`` of different sizes have run, so what a row adds is known."""
        return self._policy.batching_measured(model)

    def full_batch_s(self, model: str) -> float | None:
        """What a full batch of ``model`` sums to in the scheduler's estimates (None before
        its first batch, or for a model that runs one request at a time)."""
        loaded = self.cache.resident_model(model)
        if loaded is not None and not loaded.spec.batchable:
            return None
        return self._policy.full_batch_s(model)

    def marginal_seconds_per_row(self, model: str) -> float | None:
        """What one more row adds to a batch of ``model`` (None before its first batch)."""
        return self._policy.marginal_seconds_per_row(model)

    def marginal_seconds_per_token(self, model: str) -> float | None:
        """What one more real token adds to a batch of ``model``, for a model with sequences
        (token ids); None for one whose cost is per row, or before its first batch."""
        return self._policy.marginal_seconds_per_token(model)

    def stats(self) -> dict[str, ModelStats]:
        return self._policy.stats()

    @property
    def queued(self) -> int:
        return self._policy.queued

    def estimated_backlog_s(self) -> float:
        """Device seconds of queued and running work, from measured per-row service times."""
        return self._policy.estimated_backlog_s()

    @property
    def oom_splits(self) -> int:
        return self._runner.oom_splits if self._runner is not None else 0

    async def close(self) -> None:
        """Fails queued requests with Unavailable, lets running batches finish, stops."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for rid, req in list(self._waiting.items()):
            if self._policy.cancel(rid):
                self._waiting.pop(rid)
                if not req.future.done():
                    req.future.set_exception(Unavailable("the inference engine is shutting down"))
        if self._in_flight:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        self._compute.shutdown(wait=False)
        if self._stage is not None:
            self._stage.shutdown(wait=False)

    # ---- driving the policy --------------------------------------------------------------

    def _schedule_pump(self) -> None:
        # Deferred with call_soon, not run inline: callers woken by a finished batch all
        # resubmit in this loop iteration, and the pump after them sees every one of them.
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._closed:
            return
        if not self._policy.queued:
            # Nothing waits: the policy has no batch, expiry or wake-up to give (its
            # decisions are all about queued requests). A finished batch pumps twice and a
            # lone caller's batch finds the queue empty both times: skip the poll.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        loop = self._loop or asyncio.get_running_loop()
        now = self._clock()
        decision = self._policy.poll(now)
        for pending in decision.expired:
            req = self._waiting.pop(pending.request_id, None)
            if req is not None and not req.future.done():
                req.future.set_exception(
                    DeadlineExceeded(
                        f"request for model {pending.model!r} passed its deadline after "
                        f"{now - pending.enqueued_at:.3f}s in the queue; the node is busy: "
                        "give it a later deadline or send it elsewhere"
                    )
                )
        for batch in decision.batches:
            # Handed to the worker now, not from a task that would first wait its turn
            # behind every callback already queued on the loop.
            self._submit(loop, batch, [self._waiting.pop(rid) for rid in batch.request_ids])
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if decision.wake_at is not None:
            delay = max(0.0, decision.wake_at - now)
            self._timer = loop.call_at(loop.time() + delay, self._schedule_pump)
        if decision.repoll:  # a batch for the model worker settles: look again next turn
            self._schedule_pump()

    def _runner_now(self) -> BatchRunner:
        """The batch runner, made on first use (from a worker thread: imports torch)."""
        runner = self._runner
        if runner is not None:
            return runner
        with self._runner_lock:
            if self._runner is None:
                from p2pagent.inference.runner import BatchRunner

                if self._set_threads:
                    devices.configure_threads(self.config.intra_op_threads)
                self._runner = BatchRunner(self.device.device)
            return self._runner

    def _submit(self, loop: asyncio.AbstractEventLoop, batch: Batch, reqs: list[_Request]) -> None:
        """Runs a batch on the workers; its outcome comes back as one loop callback.

        One ``call_soon_threadsafe`` per batch, not a future per request nor a task per
        batch: each hop between the worker and the loop is a thread wake-up, which costs
        more than the Python around it on a busy host.
        """
        model = reqs[0].model
        parts = [r.inputs for r in reqs]
        if model.ragged is not None and self.config.ragged_batching:
            parts = pad_ragged(model.ragged, parts, self.config.length_bucket)
        self._in_flight += 1
        if isinstance(model.fn, RemoteModel):
            self._submit_remote(model.fn, batch, reqs, parts)
            return

        def deliver(
            outs: list[list[torch.Tensor]] | None, seconds: float, error: BaseException | None
        ) -> None:
            try:
                loop.call_soon_threadsafe(self._complete, batch, reqs, outs, seconds, error)
            except RuntimeError:  # the loop is closed: nobody is left to answer
                pass

        if self._stage is None:

            def run() -> None:
                start = time.perf_counter()
                try:
                    outs, seconds = self._runner_now().run(model, parts)
                except BaseException as e:
                    deliver(None, time.perf_counter() - start, e)
                else:
                    deliver(outs, seconds, None)

            self._compute.submit(run)
            return

        def stage_then_compute() -> None:
            # Runs on the staging thread; queues the forward pass on the compute thread as
            # soon as the copy is issued, with no trip through the event loop.
            start = time.perf_counter()
            try:
                runner = self._runner_now()
                staged = runner.stage(model, parts)
            except BaseException as e:
                deliver(None, time.perf_counter() - start, e)
                return

            def compute() -> None:
                from p2pagent.inference.runner import split

                try:
                    outputs, seconds = runner.compute(model, staged)
                    outs = split(model, outputs, parts)
                except BaseException as e:
                    deliver(None, time.perf_counter() - start, e)
                else:
                    deliver(outs, seconds, None)

            self._compute.submit(compute)

        self._stage.submit(stage_then_compute)

    def _submit_remote(
        self,
        remote: RemoteModel,
        batch: Batch,
        reqs: list[_Request],
        parts: list[list[InputTensor]],
    ) -> None:
        """A batch of a model in the isolated worker (worker.py): driven from the loop, which
        writes its inputs into shared memory and sends the request; the worker's answer comes
        back through the loop's reader, which completes the batch (no thread, no task).
        ``parts``: the requests' inputs as the device takes them (token ids padded to the
        batch's length, so ragged requests concatenate in the shared region)."""
        start = time.perf_counter()

        def done(outs: list[list[torch.Tensor]] | None, error: BaseException | None) -> None:
            self._complete(batch, reqs, outs, time.perf_counter() - start, error)

        remote.submit(reqs[0].model, parts, done)

    def _complete(
        self,
        batch: Batch,
        reqs: list[_Request],
        outs: list[list[torch.Tensor]] | None,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        """A batch's outcome, on the loop: next batch to the device, then the callers."""
        self._in_flight -= 1
        model = reqs[0].model
        ok = outs is not None
        self._policy.on_batch_done(batch.batch_id, seconds, ok=ok, now=self._clock())
        # Requests already waiting go to the device before this batch's callers are woken:
        # the device works while the event loop delivers results.
        self._pump()
        if outs is not None:
            names = model.spec.output_names
            if model.ragged is not None and model.ragged.per_token:
                outs = trim_ragged(model.ragged, names, outs, [r.inputs for r in reqs])
            for r, out in zip(reqs, outs):
                if not r.future.done():
                    r.future.set_result(dict(zip(names, out)))
        else:
            failure = (
                error
                if isinstance(error, P2PAgentError)
                else _model_error(model, batch, error or RuntimeError("no outputs"))
            )
            for r in reqs:
                if not r.future.done():
                    # One exception object per caller: raising a shared one would splice
                    # the callers' tracebacks together.
                    r.future.set_exception(type(failure)(str(failure)))
        # After the results: their callers' resubmissions join the next batch.
        self._schedule_pump()
        if self._in_flight == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


def _layout(t: InputTensor) -> Hashable:
    """What must match for two requests' inputs to be concatenated: dtype, the non-batch
    dimensions and the device."""
    if isinstance(t, HostTensor):
        return (t.dtype.name, t.shape[1:], "cpu")
    return (str(t.dtype).removeprefix("torch."), tuple(t.shape[1:]), str(t.device))


def _model_error(model: LoadedModel, batch: Batch, e: BaseException) -> Internal:
    return Internal(
        f"model {model.name!r} failed on a batch of {batch.rows} row(s) "
        f"({len(batch.requests)} request(s)): {type(e).__name__}: {e}"
    )
