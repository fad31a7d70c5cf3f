"""The daemon's side of the model worker: a confined process that runs code-bearing models
and Hugging Face folders, under a memory limit (``inference.worker_memory_bytes``).

TorchScript and torch.export archives are code; with ``inference.isolate_code_models`` on (the
default) the node never loads one itself, nor a folder's model (``FolderLoad``: the worker
builds it from the verified pack; the tokenizer stays here). ``worker_loader.isolating_loader``
is the model cache's loader: for those formats it hands the verified file to the worker as an
open descriptor and returns a ``LoadedModel`` whose ``fn`` is a ``RemoteModel``; the engine sends
such a model's batches to ``RemoteModel.submit``, on the event loop: it writes the inputs
straight into shared memory (the batch's concatenation is that write), sends a small msgpack
request, and the answer comes back through a reader on the loop, which completes the batch
there and then: no task, no future, no thread per batch (``ModelWorker.submit``; a load, a
worker to start, a large batch copied from a thread and a retry take the coroutine path,
``ModelWorker.run``). So a batch costs the same two wake-ups as an in-process one (loop ->
worker -> loop), not four.
Batching policy, queues and deadlines stay in the engine; the worker only executes.

The worker answers requests in order, one at a time; the daemon keeps them in a FIFO and
hands it up to ``worker_wire.SLOTS`` batches at once, each in its own pair of input and output
regions: the next batch waits in the socket while one runs, so the worker goes on to it
without sleeping, and the daemon copies one batch's outputs while the next is computed.

Failures. The worker is untrusted: every answer is checked (worker_wire, worker_tensors). A
worker that exits or breaks the protocol fails what it had; a batch or load it dies under is
tried once more in a new worker (so a worker killed from outside, even between requests,
costs no request), and a second death is Unavailable (Internal naming the model where both
came while loading it: the model's doing, not to retry). A worker that does not answer within
``inference.worker_timeout_s`` is killed and the request fails with Internal (most likely the
model's doing: not retried here). The daemon never waits forever and never dies with it.
Diagnostics: ``P2PAGENT_WORKER_PROBE`` (paths joined by ``os.pathsep``) makes each new worker
try to open those paths from inside its sandbox and the daemon log the outcome; the isolation
tests use it to show the key is unreadable from the worker itself.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pagent.errors import Internal, InvalidArgument, P2PAgentError, Unavailable
from p2pagent.inference import isolation, worker_tensors, worker_wire
from p2pagent.inference.formats import LoadedModel, ModelFormat
from p2pagent.inference.hf.worker_load import FolderLoad
from p2pagent.inference.remote_model import RemoteModel
from p2pagent.inference.spec import ModelSpec
from p2pagent.inference.worker_failures import (
    WorkerLost,
    after_loss,
    batch_error,
    drain_stderr,
    load_error,
)
from p2pagent.inference.worker_process import Pending, Slots, WorkerProcess, future_answer
from p2pagent.inference.worker_wire import ChannelClosed, Region, TensorRef

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.spec import InputTensor

    #: A batch's outcome: its outputs (host tensors in port order), or why there are none.
    Done = Callable[[list[torch.Tensor] | None, BaseException | None], None]

log = logging.getLogger(__name__)

PROBE_ENV = "P2PAGENT_WORKER_PROBE"
#: Batches with more input bytes than this are written into shared memory from a thread,
#: not on the event loop.
_LOOP_COPY_BYTES = 1 << 20


class ModelWorker:
    """The worker process, started on first use and replaced when lost; loop-owned state."""

    def __init__(
        self, plan: isolation.Plan, scratch: Path, threads: int, timeout_s: float,
        memory_bytes: int = 0,
    ) -> None:  # fmt: skip
        self.plan = plan
        self.scratch = scratch
        self.threads = threads
        self.timeout_s = timeout_s
        #: The worker's data segment limit (RLIMIT_DATA); 0: none.
        self.memory_bytes = memory_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keys = itertools.count(1)
        self._current: WorkerProcess | None = None
        #: Slots no batch holds, and the lock that loads a model once for concurrent batches.
        self._slots = Slots(worker_wire.SLOTS)
        self._load_lock: asyncio.Lock | None = None
        self._forgotten: collections.deque[int] = collections.deque()  # thread-safe appends
        #: Batch requests made before, packed (``_request``).
        self._requests: dict[tuple[Any, ...], tuple[list[TensorRef], int, bytes]] = {}
        self._closed = False
        #: Workers started (the first one included) and lost, and batches ``submit`` handed
        #: over at once (no task), for stats and tests.
        self.starts = 0
        self.losses = 0
        self.handed_over = 0

    @staticmethod
    def create(
        worker_uid: int, protected: list[Path], threads: int, timeout_s: float,
        memory_bytes: int = 0,
    ) -> ModelWorker:  # fmt: skip
        scratch = Path(tempfile.mkdtemp(prefix="p2pagent-worker-"))
        p = isolation.plan(worker_uid, protected, scratch)
        if p.uid is not None and p.gid is not None:
            os.chown(scratch, p.uid, p.gid)
        worker = ModelWorker(p, scratch, threads, timeout_s, memory_bytes)
        try:
            worker._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass  # bound on the first coroutine call instead
        return worker

    @property
    def pid(self) -> int | None:
        cur = self._current
        return cur.proc.pid if cur is not None and cur.proc.poll() is None else None

    # ---- the cache's loader (a thread) and direct callers ---------------------------------

    def load(
        self, name: str, path: Path, spec: ModelSpec, device: torch.device | str,
        fmt: ModelFormat, folder: FolderLoad | None = None,
    ) -> LoadedModel:  # fmt: skip
        """Loads a model in the worker (a code-bearing archive, or a Hugging Face folder's
        pack with ``folder``); blocking (the cache's loader thread). The caller adds a
        folder's tokenizer and ragged padding to the answer."""
        import torch

        remote = RemoteModel(
            self, next(self._keys), name, Path(path), fmt, str(device),
            list(spec.output_names), folder,
        )  # fmt: skip
        nbytes = self.wait_from_thread(self._retrying(f"loading model {name!r}", remote, None))
        weakref.finalize(remote, self._forgotten.append, remote.key)
        return LoadedModel(name, spec, fmt, remote, torch.device(device), nbytes)

    def wait_from_thread(self, coro: Any) -> Any:
        loop = self._loop
        if loop is None:
            coro.close()
            raise Unavailable("the model worker has no event loop yet")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # it would wait for itself
            coro.close()
            raise RuntimeError("wait_from_thread called on the event loop's own thread")
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            # Bounded: a loop that stops before running it must not strand this thread.
            return future.result(timeout=2 * self.timeout_s + 120.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable(
                "the model worker did not answer (the node may be stopping)"
            ) from None

    # ---- on the loop -----------------------------------------------------------------------

    async def run(
        self,
        remote: RemoteModel,
        parts: Sequence[Sequence[InputTensor]],
        rows: int,
        batchable: bool,
    ) -> tuple[list[torch.Tensor], float]:
        """The batch's outputs (host tensors, in port order) and the seconds it took."""
        start = time.perf_counter()
        outputs = await self._retrying(
            f"running a batch of model {remote.name!r}", remote, (parts, rows, batchable)
        )
        return outputs, time.perf_counter() - start

    def submit(
        self, remote: RemoteModel, parts: Sequence[Sequence[InputTensor]], rows: int,
        batchable: bool, done: Done,
    ) -> None:  # fmt: skip
        """Hands a batch to the worker; ``done`` gets its outputs (host tensors, in port
        order) or the error, later on the loop, never from inside this call.

        The steady state (the worker running with the model loaded, a slot free, inputs
        small enough to copy on the loop) is handed over right here: the inputs written into
        the slot's region and the request sent, and the reader calls ``done`` with the
        answer; no task, no future, no extra turn of the loop per batch. Anything else
        (a load, a worker to start, a big copy) takes the coroutine path, ``run``; so does
        the second try after a worker lost under a batch (``_retrying``)."""
        cur = self._current
        slot = None
        if cur is not None and not cur.lost and remote.key in cur.loaded and not self._forgotten:
            slot = self._slots.try_take()
        if cur is None or slot is None:
            self._later(remote, (parts, rows, batchable), done, 1)
            return
        try:
            refs, needed, request = self._request(remote.key, slot, parts, batchable, rows)
            small = needed <= _LOOP_COPY_BYTES  # else copied from a thread: the coroutine's
            if small:
                region = self._input_region(cur, slot, needed)
                worker_tensors.write_inputs(region, refs, parts)
        except Exception:  # the coroutine path does it again, raising what there is to raise
            small = False
        if not small:
            self._slots.give(slot)
            self._later(remote, (parts, rows, batchable), done, 1)
            return

        def answered(reply: dict[str, Any] | None, error: BaseException | None) -> None:
            outputs = None
            if reply is not None:
                outputs, error = self._outputs(cur, slot, reply, remote.name, rows, len(parts))
            self._slots.give(slot)  # after the outputs were copied out of its region
            if isinstance(error, WorkerLost):
                doing = f"running a batch of model {remote.name!r}"
                error = after_loss(error, doing, 1, False)
                if error is None:  # once more, in a new worker
                    self._later(remote, (parts, rows, batchable), done, 2)
                    return
            done(outputs, error)

        self.handed_over += 1
        cur.pending.append(Pending(answered, self.timeout_s, slot))
        if len(cur.pending) == 1:
            cur.arm()
        try:
            cur.sock.sendall(request)
        except OSError as e:
            cur.lose(f"could not be reached ({e})")  # ``answered`` has it, as every pending

    def _request(
        self, key: int, slot: int, parts: Sequence[Sequence[InputTensor]], batchable: bool,
        rows: int,
    ) -> tuple[list[TensorRef], int, bytes]:  # fmt: skip
        """A batch's input layout, the bytes it needs and its run request, packed: made
        once per model, slot and input shapes (a lone caller's batches are all alike) and
        kept, so the worker too sees the same bytes and runs them as it did before."""
        shapes = tuple((t.dtype, t.shape) for t in parts[0])
        made = self._requests.get((key, slot, batchable, rows, len(parts) > 1, shapes))
        if made is not None:
            return made
        refs, needed = worker_tensors.input_layout(parts, batchable, rows)
        message = {"op": "run", "key": key, "slot": slot, "inputs": [r.pack() for r in refs]}
        made = refs, needed, worker_wire.pack(message)
        if len(self._requests) >= 64:
            self._requests.clear()
        self._requests[(key, slot, batchable, rows, len(parts) > 1, shapes)] = made
        return made

    def _later(self, remote: RemoteModel, batch: Any, done: Done, first_try: int) -> None:
        """A batch on the coroutine path, its outcome handed to ``done``."""
        doing = f"running a batch of model {remote.name!r}"
        task = asyncio.ensure_future(self._retrying(doing, remote, batch, first_try))

        def finished(t: asyncio.Future[list[torch.Tensor]]) -> None:
            if t.cancelled():
                done(None, Unavailable("the batch was cancelled"))
            elif (e := t.exception()) is not None:
                done(None, e)
            else:
                done(t.result(), None)

        task.add_done_callback(finished)

    async def probe(self, paths: list[str]) -> dict[str, str]:
        """Tries to open each path from inside the worker: "opened" or the errno's name."""
        reply = await self._ask({"op": "probe", "paths": paths}, [], "probing paths")
        results = reply.get("results")
        if not isinstance(results, dict):
            raise Internal("the model worker answered a probe with no results")
        return {str(k)[:4096]: str(v)[:64] for k, v in results.items()}

    def warm(self, architecture: str = "") -> asyncio.Future[dict[str, Any]] | None:
        """Starts the worker now if none runs (one process, whatever the models), and with an
        ``architecture`` has it import that folder model's code: the first request of a model
        just published then does not pay torch's and transformers' imports. On the loop; the
        future (None: nothing asked) fails as a request would."""
        self._process()
        if not architecture:
            return None
        message = {"op": "warm", "architecture": architecture}
        return asyncio.ensure_future(self._ask(message, [], f"importing {architecture}"))

    async def aclose(self) -> None:
        self._closed = True
        if self._current is not None:
            self._current.lose("was stopped: the node is shutting down", log_it=False)
        await asyncio.to_thread(shutil.rmtree, self.scratch, True)

    # ---- requests --------------------------------------------------------------------------

    async def _retrying(
        self, doing: str, remote: RemoteModel, batch: Any, first_try: int = 1
    ) -> Any:
        """A load (``batch`` None) or a batch, tried once more in a new worker if the worker
        dies under it; Internal if it hung or died loading the model both times (the model's
        doing: not to retry), else Unavailable after a second death. ``first_try`` 2: the
        first try was ``submit``'s (a batch of a loaded model)."""
        loading = first_try == 1
        for tries in range(first_try, 3):
            try:
                if batch is None:
                    return await self._load(remote)
                return await self._run_once(remote, *batch)
            except WorkerLost as e:
                loading = loading and e.loading
                error = after_loss(e, doing, tries, loading, remote.name)
                if error is not None:
                    raise error from None
        raise AssertionError("unreachable")

    async def _load(self, remote: RemoteModel) -> int:
        try:
            fd = os.open(remote.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise InvalidArgument(f"cannot read model file {remote.path}: {e}") from None
        message: dict[str, Any] = {
            "op": "load", "key": remote.key, "format": remote.format.value,
            "device": remote.device, "outputs": remote.output_names,
        }  # fmt: skip
        if remote.folder is not None:
            message.update(
                architecture=remote.folder.architecture, head=remote.folder.head,
                files=[f.pack() for f in remote.folder.files],
            )  # fmt: skip
        folder = remote.folder is not None
        try:
            cur = self._process()
            reply = await self._ask(
                message, [fd], f"loading model {remote.name!r}", process=cur,
                failed=lambda kind, msg: load_error(remote.name, remote.path, folder, kind, msg),
            )  # fmt: skip
        except WorkerLost as e:
            e.loading = not e.queued  # a worker killed as it starts is no load's doing
            raise
        finally:
            os.close(fd)
        nbytes = reply.get("nbytes")
        if not isinstance(nbytes, int) or nbytes < 0:
            raise cur.lose("broke the protocol (a load answer without a size)")
        cur.loaded.add(remote.key)
        return nbytes

    async def _run_once(
        self,
        remote: RemoteModel,
        parts: Sequence[Sequence[InputTensor]],
        rows: int,
        batchable: bool,
    ) -> list[torch.Tensor]:
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        slot = await self._slots.take()  # a batch per slot: its inputs and outputs are its own
        try:
            return await self._run_in(slot, remote, parts, rows, batchable)
        finally:
            self._slots.give(slot)

    async def _run_in(
        self, slot: int, remote: RemoteModel, parts: Sequence[Sequence[InputTensor]],
        rows: int, batchable: bool,
    ) -> list[torch.Tensor]:  # fmt: skip
        cur = self._process()
        if remote.key not in cur.loaded:
            assert self._load_lock is not None
            async with self._load_lock:  # two batches of a model not loaded yet load it once
                cur = self._process()
                if remote.key not in cur.loaded:
                    await self._load(remote)
                    cur = self._process()
        refs, needed = worker_tensors.input_layout(parts, batchable, rows)
        region = self._input_region(cur, slot, needed)
        if needed <= _LOOP_COPY_BYTES:
            worker_tensors.write_inputs(region, refs, parts)
        else:
            await asyncio.to_thread(worker_tensors.write_inputs, region, refs, parts)
        reply = await self._ask(
            {"op": "run", "key": remote.key, "slot": slot, "inputs": [r.pack() for r in refs]},
            [], f"running a batch of model {remote.name!r}",
            failed=lambda kind, msg: batch_error(remote.name, kind, msg, rows, len(parts)),
            process=cur, slot=slot,
        )  # fmt: skip
        outputs, error = self._outputs(cur, slot, reply, remote.name, rows, len(parts))
        if error is not None:
            raise error
        assert outputs is not None
        return outputs

    def _input_region(self, cur: WorkerProcess, slot: int, needed: int) -> Region:
        """The slot's input region, replaced by a larger one (announced to the worker) where
        the batch does not fit."""
        region = cur.inputs[slot]
        if region is None or region.size < needed:
            if region is not None:
                region.close()
            region = cur.inputs[slot] = Region.create(needed, "p2pagent-worker-in")
            self._send(cur, {"op": "inbuf", "size": region.size, "slot": slot}, [region.fd])
        return region

    def _outputs(
        self, cur: WorkerProcess, slot: int, reply: dict[str, Any], name: str, rows: int,
        requests: int,
    ) -> tuple[list[torch.Tensor] | None, BaseException | None]:  # fmt: skip
        """A batch's answer: its outputs, copied out of the slot's region and checked, or
        the error it says (WorkerLost: it broke the protocol)."""
        if reply.get("ok") is not True:
            kind, text = str(reply.get("kind"))[:32], str(reply.get("message"))[:2000]
            return None, batch_error(name, kind, text, rows, requests)
        try:
            return worker_tensors.read_outputs(cur.outputs[slot], reply.get("outputs")), None
        except ChannelClosed as e:
            return None, cur.lose(f"broke the protocol ({e})")

    async def _ask(
        self, message: dict[str, Any], fds: list[int], doing: str, *, failed: Any = None,
        process: WorkerProcess | None = None, slot: int = -1,
    ) -> dict[str, Any]:  # fmt: skip
        """Sends a request and awaits the worker's answer (WorkerLost if the worker is)."""
        cur = process or self._process()
        if cur.lost:
            raise WorkerLost("was replaced before it got to this", queued=True)
        future: asyncio.Future[dict[str, Any]] = self._bind_loop().create_future()
        cur.pending.append(Pending(future_answer(future), self.timeout_s, slot))
        if len(cur.pending) == 1:
            cur.arm()
        self._send(cur, message, fds)
        reply = await future
        if reply.get("ok") is True:
            return reply
        kind, text = str(reply.get("kind"))[:32], str(reply.get("message"))[:2000]
        if failed is not None:
            error: P2PAgentError = failed(kind, text)
            raise error
        raise Internal(f"the model worker failed {doing}: {text}")

    def _send(self, cur: WorkerProcess, message: dict[str, Any], fds: list[int]) -> None:
        try:
            worker_wire.send(cur.sock, message, fds)
        except OSError as e:
            raise cur.lose(f"could not be reached ({e})") from None

    # ---- the process -----------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _process(self) -> WorkerProcess:
        """The live worker, started if there is none; models the cache let go of unloaded."""
        if self._closed:
            raise Unavailable("the inference engine is shut down")
        # A worker that exited while idle is lost by the reader, or by the next send (the
        # request then goes again in a new worker, ``_retrying``): no wait(2) per batch.
        cur = self._current
        if cur is None:
            cur = self._spawn()
        while self._forgotten:
            key = self._forgotten.popleft()
            if key in cur.loaded:
                cur.loaded.discard(key)
                self._send(cur, {"op": "unload", "key": key}, [])
        return cur

    def _spawn(self) -> WorkerProcess:
        loop = self._bind_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = isolation.worker_environment(self.scratch)
        cmd = [sys.executable, "-P", "-m", "p2pagent.inference.worker_main", str(child.fileno())]
        try:
            # close_fds (the default) plus pass_fds: the worker inherits its end of the control
            # socket and nothing else (no listening socket, no key file, no database). A vfork
            # and exec: nothing of this process's gRPC state is copied.
            proc = subprocess.Popen(
                cmd, pass_fds=(child.fileno(),), env=env, cwd=self.scratch,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        except OSError as e:
            parent.close()
            raise Unavailable(f"cannot start the model worker: {e}") from None
        finally:
            child.close()
        cur = self._adopt(proc, parent)
        threading.Thread(
            target=drain_stderr, args=(proc, cur.stderr), name="model-worker-stderr", daemon=True
        ).start()
        init = {
            "op": "init", "rules": [[r.path, r.access.value] for r in self.plan.rules],
            "uid": self.plan.uid, "gid": self.plan.gid, "threads": self.threads,
            "parent": os.getpid(), "memory_bytes": self.memory_bytes,
        }  # fmt: skip
        # Sent now, before anything else can be: the worker reads it first. Starting imports
        # torch, which can be slow on a busy host.
        hello: asyncio.Future[dict[str, Any]] = loop.create_future()
        cur.pending.append(Pending(future_answer(hello), max(self.timeout_s, 120.0)))
        # Before the send: a worker already gone fails ``hello`` inside it, and its outcome
        # must have a reader (else asyncio logs "exception never retrieved").
        hello.add_done_callback(lambda f: self._started(cur, f))
        cur.arm()
        self._send(cur, init, [])
        return cur

    def _adopt(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> WorkerProcess:
        """Makes the process at the other end of ``sock`` the current worker: its answers
        read on the loop from now on (tests adopt a worker serving from a thread)."""
        loop = self._bind_loop()
        sock.setblocking(False)
        cur = WorkerProcess(proc, sock, loop, self._lost)
        self._current = cur
        self.starts += 1
        loop.add_reader(sock.fileno(), cur.on_readable)
        return cur

    def _lost(self, cur: WorkerProcess) -> None:
        if cur is self._current:
            self._current = None
            self.losses += 1

    def _started(self, cur: WorkerProcess, future: asyncio.Future[dict[str, Any]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the requests queued behind it failed with it
        hello = future.result()
        if hello.get("ok") is not True:
            why = str(hello.get("message"))[:500]
            cur.lose(f"could not confine itself ({why})")
            return
        log.info(
            "model worker started: pid %d, uid %s, gid %s, no_new_privs %s, capabilities "
            "dropped %s, Landlock %s",
            cur.proc.pid, hello.get("uid"), hello.get("gid"), hello.get("no_new_privs"),
            hello.get("capabilities_dropped"),
            f"ABI {hello.get('landlock_abi')} enforced" if hello.get("landlock_abi")
            else f"not enforced ({str(hello.get('landlock_error'))[:200]})",
        )  # fmt: skip
        paths = [p for p in os.environ.get(PROBE_ENV, "").split(os.pathsep) if p]
        if paths and cur is self._current:
            probe = asyncio.ensure_future(self.probe(paths))
            probe.add_done_callback(_log_probe)


def _log_probe(task: asyncio.Future[dict[str, str]]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    for path, outcome in task.result().items():
        log.info("model worker probe: open %s from the worker: %s", path, outcome)
