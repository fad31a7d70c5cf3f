"""The daemon's side of the model worker: a confined process that runs code-bearing models.

TorchScript and torch.export archives are code; with ``inference.isolate_code_models`` on (the
default) the node never loads one itself. ``ModelWorker.load`` is the model cache's loader for
them: it hands the verified file to the worker as an open descriptor and returns a
``LoadedModel`` whose ``fn`` is a ``RemoteModel``; the engine sends such a model's batches to
``RemoteModel.run`` on its compute thread, which writes the inputs straight into shared memory
(the batch's concatenation is that write), sends a small msgpack request and blocks for the
answer. Batching policy, queues and deadlines stay in the engine; the worker only executes.

Failures. The worker is untrusted: every answer is checked (worker_wire). A worker that exits
fails the batch it was running with Unavailable; one that does not answer within
``inference.worker_timeout_s`` is killed and fails its batch the same way. Either way the next
request starts a fresh worker and loads its model again: the daemon never waits forever and
never dies with its worker. One request is in the worker at a time (a lock), so at most one
batch is ever lost.

Diagnostics: ``P2PAGENT_WORKER_PROBE`` (paths joined by ``os.pathsep``) makes each new worker
try to open those paths from inside its sandbox and the daemon log the outcome; the isolation
tests use it to show the key is unreadable from the worker itself.
"""

from __future__ import annotations

import collections
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
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from p2pagent.errors import Internal, InvalidArgument, P2PAgentError, ResourceExhausted, Unavailable
from p2pagent.inference import dtypes, isolation, worker_wire
from p2pagent.inference.formats import LoadedModel, ModelFormat, detect_format, load_model
from p2pagent.inference.spec import ModelSpec
from p2pagent.inference.tensors import HostTensor, host_to_torch
from p2pagent.inference.worker_wire import ChannelClosed, Region, TensorRef

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.cache import Loader
    from p2pagent.inference.spec import InputTensor

log = logging.getLogger(__name__)

_T = TypeVar("_T")
PROBE_ENV = "P2PAGENT_WORKER_PROBE"
#: Environment the worker keeps from the daemon's (nothing else: no tokens, no paths).
_KEEP_ENV = (
    "PATH", "LANG", "LC_ALL", "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
)  # fmt: skip


class _WorkerLost(Exception):
    """The worker exited, broke the protocol or stopped answering (it has been stopped)."""

    def __init__(self, why: str, *, hung: bool = False) -> None:
        super().__init__(why)
        self.hung = hung


class RemoteModel:
    """A model loaded in the worker: the ``fn`` of its ``LoadedModel``."""

    def __init__(
        self,
        worker: ModelWorker,
        key: int,
        name: str,
        path: Path,
        fmt: ModelFormat,
        device: str,
        output_names: list[str],
    ) -> None:
        self.worker = worker
        self.output_names = output_names
        self.key = key
        self.name = name
        self.path = path
        self.format = fmt
        self.device = device

    def run(
        self, model: LoadedModel, parts: Sequence[Sequence[InputTensor]]
    ) -> tuple[list[list[torch.Tensor]], float]:
        """One batch in the worker: each request's outputs and the seconds it took."""
        from p2pagent.inference.runner import _outputs, split

        rows = sum(int(p[0].shape[0]) for p in parts) if model.spec.batchable else 1
        outputs, seconds = self.worker.run(self, model, parts, rows)
        return split(model, _outputs(model, outputs, rows), parts), seconds

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Direct call with whole tensors (one request), for callers outside the engine."""
        rows = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
        return self.worker.run(self, None, [list(inputs)], rows)[0]


class ModelWorker:
    def __init__(self, plan: isolation.Plan, scratch: Path, threads: int, timeout_s: float) -> None:
        self.plan = plan
        self.scratch = scratch
        self.threads = threads
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._inputs: Region | None = None
        self._outputs: Region | None = None
        self._loaded: set[int] = set()  # keys loaded in the current process
        self._forgotten: collections.deque[int] = collections.deque()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._closed = False
        #: Workers started (the first one included) and lost, for stats and tests.
        self.starts = 0
        self.losses = 0

    @staticmethod
    def create(
        worker_uid: int, protected: list[Path], threads: int, timeout_s: float
    ) -> ModelWorker:
        scratch = Path(tempfile.mkdtemp(prefix="p2pagent-worker-"))
        p = isolation.plan(worker_uid, protected, scratch)
        if p.uid is not None and p.gid is not None:
            os.chown(scratch, p.uid, p.gid)
        return ModelWorker(p, scratch, threads, timeout_s)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # ---- the cache's loader ----------------------------------------------------------------

    def load(
        self,
        name: str,
        path: Path,
        spec: ModelSpec,
        device: torch.device | str,
        fmt: ModelFormat,
    ) -> LoadedModel:
        """Loads a code-bearing model in the worker (blocking: the cache's loader thread)."""
        import torch

        remote = RemoteModel(
            self, next(self._keys), name, Path(path), fmt, str(device), list(spec.output_names)
        )
        nbytes = self._attempt(f"loading model {name!r}", lambda: self._load_locked(remote))
        weakref.finalize(remote, self._forgotten.append, remote.key)
        return LoadedModel(name, spec, fmt, remote, torch.device(device), nbytes)

    def probe(self, paths: list[str]) -> dict[str, str]:
        """Tries to open each path from inside the worker: "opened" or the errno's name."""

        def ask() -> dict[str, Any]:
            self._started_locked()
            return self._ask_locked({"op": "probe", "paths": paths}, [], "probing paths")

        reply = self._attempt("probing paths", ask)
        results = reply.get("results")
        if not isinstance(results, dict):
            raise Internal("the model worker answered a probe with no results")
        return {str(k)[:4096]: str(v)[:64] for k, v in results.items()}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop_locked()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ---- batches ---------------------------------------------------------------------------

    def run(
        self,
        remote: RemoteModel,
        model: LoadedModel | None,
        parts: Sequence[Sequence[InputTensor]],
        rows: int,
    ) -> tuple[list[torch.Tensor], float]:
        """The batch's outputs (host tensors, in port order) and the seconds it took."""
        start = time.perf_counter()

        def attempt() -> list[torch.Tensor]:
            self._started_locked()
            if remote.key not in self._loaded:
                self._load_locked(remote)
            refs = self._write_inputs_locked(parts, model is None or model.spec.batchable, rows)
            reply = self._ask_locked(
                {"op": "run", "key": remote.key, "inputs": [r.pack() for r in refs]},
                [],
                f"running a batch of model {remote.name!r}",
                failed=lambda kind, msg: _batch_error(remote.name, kind, msg, rows, len(parts)),
            )
            return self._read_outputs_locked(reply)

        outputs = self._attempt(f"running a batch of model {remote.name!r}", attempt)
        return outputs, time.perf_counter() - start

    def _attempt(self, doing: str, attempt: Callable[[], _T]) -> _T:
        """Runs ``attempt`` with the lock held. A worker that dies under it is replaced and
        the attempt made once more, so a worker killed from outside (or between requests,
        unnoticed until the next one) costs no request; a second death fails it with
        Unavailable. A worker that stopped answering is not given another go: Internal."""
        with self._lock:
            for tries in (1, 2):
                try:
                    return attempt()
                except _WorkerLost as e:
                    if e.hung:
                        # Most likely the model's doing: another node would hang too.
                        raise Internal(
                            f"the model worker {e} while {doing}; a new worker starts on "
                            "the next request"
                        ) from None
                    if tries == 2:
                        raise Unavailable(
                            f"the model worker {e} while {doing}, twice in a row; a new "
                            "worker starts on the next request: retry"
                        ) from None
                    log.info("%s again in a new model worker", doing)
        raise AssertionError("unreachable")

    # ---- internals (all with the lock held) -----------------------------------------------

    def _load_locked(self, remote: RemoteModel) -> int:
        self._started_locked()
        try:
            fd = os.open(remote.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise InvalidArgument(f"cannot read model file {remote.path}: {e}") from None
        try:
            reply = self._ask_locked(
                {
                    "op": "load",
                    "key": remote.key,
                    "format": remote.format.value,
                    "device": remote.device,
                    "outputs": remote.output_names,
                },
                [fd],
                f"loading model {remote.name!r}",
                failed=lambda kind, msg: _load_error(remote, kind, msg),
            )
        finally:
            os.close(fd)
        nbytes = reply.get("nbytes")
        if not isinstance(nbytes, int) or nbytes < 0:
            raise self._protocol_error("a load answer without a size")
        self._loaded.add(remote.key)
        return nbytes

    def _started_locked(self) -> None:
        if self._closed:
            raise Unavailable("the inference engine is shut down")
        proc = self._proc
        if proc is not None and proc.poll() is None:
            while self._forgotten:  # models the cache let go of
                key = self._forgotten.popleft()
                if key in self._loaded:
                    self._loaded.discard(key)
                    self._send_locked({"op": "unload", "key": key}, [])
            return
        if proc is not None:
            log.warning(
                "the model worker (pid %d) exited with %s while idle; starting a new one%s",
                proc.pid, _exit_text(proc.returncode), self._stderr_text(),
            )  # fmt: skip
            self.losses += 1
            self._stop_locked()
        self._spawn_locked()

    def _spawn_locked(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
        env.update(HOME=str(self.scratch), TMPDIR=str(self.scratch), USER="p2pagent-worker")
        env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
        cmd = [sys.executable, "-P", "-m", "p2pagent.inference.worker_main", str(child.fileno())]
        try:
            # close_fds (the default) plus pass_fds: the worker inherits its end of the control
            # socket and nothing else (no listening socket, no key file, no database).
            proc = subprocess.Popen(
                cmd,
                pass_fds=(child.fileno(),),
                env=env,
                cwd=self.scratch,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        finally:
            child.close()
        self._proc, self._sock = proc, parent
        self._loaded.clear()
        self._stderr.clear()
        self.starts += 1
        threading.Thread(
            target=self._drain_stderr, args=(proc,), name="model-worker-stderr", daemon=True
        ).start()
        hello = self._ask_locked(
            {
                "op": "init",
                "rules": [[r.path, r.access.value] for r in self.plan.rules],
                "uid": self.plan.uid,
                "gid": self.plan.gid,
                "threads": self.threads,
                "parent": os.getpid(),
            },
            [],
            "starting",
            timeout=max(self.timeout_s, 120.0),
        )
        log.info(
            "model worker started: pid %d, uid %s, gid %s, no_new_privs %s, capabilities "
            "dropped %s, Landlock %s",
            proc.pid, hello.get("uid"), hello.get("gid"), hello.get("no_new_privs"),
            hello.get("capabilities_dropped"),
            f"ABI {hello.get('landlock_abi')} enforced" if hello.get("landlock_abi")
            else f"not enforced ({str(hello.get('landlock_error'))[:200]})",
        )  # fmt: skip
        paths = [p for p in os.environ.get(PROBE_ENV, "").split(os.pathsep) if p]
        if paths:
            reply = self._ask_locked({"op": "probe", "paths": paths}, [], "probing paths")
            for path, outcome in dict(reply.get("results") or {}).items():
                log.info("model worker probe: open %s from the worker: %s", path, outcome)

    def _ask_locked(
        self,
        message: dict[str, Any],
        fds: list[int],
        doing: str,
        *,
        failed: Any = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Sends a request and returns the worker's answer (_WorkerLost if it is lost)."""
        self._send_locked(message, fds)
        reply = self._receive_locked(timeout or self.timeout_s)
        if reply.get("ok") is True:
            return reply
        kind, text = str(reply.get("kind"))[:32], str(reply.get("message"))[:2000]
        if failed is not None:
            error: P2PAgentError = failed(kind, text)
            raise error
        raise Internal(f"the model worker failed {doing}: {text}")

    def _send_locked(self, message: dict[str, Any], fds: list[int]) -> None:
        assert self._sock is not None
        try:
            worker_wire.send(self._sock, message, fds)
        except OSError as e:
            raise self._lose_locked(f"could not be reached ({e})") from None

    def _receive_locked(self, timeout: float) -> dict[str, Any]:
        sock = self._sock
        assert sock is not None
        sock.settimeout(timeout)
        try:
            reply, fds = worker_wire.receive(sock)
        except TimeoutError:
            raise self._lose_locked(
                f"did not answer in {timeout:.0f}s (inference.worker_timeout_s) and was stopped",
                hung=True,
            ) from None
        except (OSError, ChannelClosed) as e:
            raise self._lose_locked(self._exit_reason(e)) from None
        if "outbuf" in reply:
            if len(fds) != 1 or not isinstance(reply["outbuf"], int):
                raise self._lose_locked("broke the protocol (an output region without its fd)")
            try:
                region = Region.adopt(fds[0], reply["outbuf"])
            except (ChannelClosed, OSError) as e:
                raise self._lose_locked(f"broke the protocol ({e})") from None
            if self._outputs is not None:
                self._outputs.close()
            self._outputs = region
        else:
            for fd in fds:
                os.close(fd)
        return reply

    def _exit_reason(self, e: BaseException) -> str:
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(2.0)
                return f"exited with {_exit_text(proc.returncode)}{self._stderr_text()}"
            except subprocess.TimeoutExpired:
                pass
        return f"broke the protocol ({e})"

    def _lose_locked(self, why: str, *, hung: bool = False) -> _WorkerLost:
        pid = self._proc.pid if self._proc is not None else 0
        log.warning("the model worker (pid %d) %s; it restarts on the next request", pid, why)
        self.losses += 1
        self._stop_locked()
        return _WorkerLost(why, hung=hung)

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                log.error("the model worker (pid %d) did not exit after SIGKILL", proc.pid)
        for region in (self._inputs, self._outputs):
            if region is not None:
                region.close()
        self._inputs = self._outputs = None
        self._loaded.clear()

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # kept, bounded, for the message when it dies
            self._stderr.append(line[:300].decode("utf-8", "replace").rstrip())
        proc.stderr.close()

    def _stderr_text(self) -> str:
        tail = [line for line in self._stderr if line][-3:]
        return f"; its last words: {' | '.join(tail)}" if tail else ""

    def _write_inputs_locked(
        self, parts: Sequence[Sequence[InputTensor]], batchable: bool, rows: int
    ) -> list[TensorRef]:
        columns = list(zip(*parts))
        specs = []
        for col in columns:
            first = col[0]
            info = _dtype_of(first)
            shape = (rows, *first.shape[1:]) if batchable and len(col) > 1 else tuple(first.shape)
            specs.append((info, tuple(int(d) for d in shape)))
        refs, needed = worker_wire.layout(specs)
        if self._inputs is None or self._inputs.size < needed:
            if self._inputs is not None:
                self._inputs.close()
                self._inputs = None
            region = Region.create(needed, "p2pagent-worker-in")
            self._inputs = region
            self._send_locked({"op": "inbuf", "size": region.size}, [region.fd])
        region = self._inputs
        for ref, col in zip(refs, columns):
            if ref.nbytes:
                _concatenate_into(region, ref, col)
        return refs

    def _read_outputs_locked(self, reply: dict[str, Any]) -> list[torch.Tensor]:
        raw = reply.get("outputs")
        region = self._outputs
        if not isinstance(raw, list) or len(raw) > worker_wire.MAX_OUTPUTS:
            raise self._protocol_error("an answer without a list of outputs")
        if raw and region is None:
            raise self._protocol_error("outputs without an output region")
        out = []
        for r in raw:
            try:
                ref = TensorRef.checked(r, region.size if region else 0, "model worker output")
            except ChannelClosed as e:
                raise self._protocol_error(str(e)) from None
            out.append(_copy_out(region, ref))
        return out

    def _protocol_error(self, what: str) -> Unavailable:
        why = f"broke the protocol ({what})"
        self._lose_locked(why)
        return Unavailable(f"the model worker {why}; it restarts on the next request: retry")


#: Formats that carry code: loaded and run only in the worker.
CODE_FORMATS = frozenset({ModelFormat.TORCHSCRIPT, ModelFormat.TORCH_EXPORT})


def isolating_loader(worker: ModelWorker) -> Loader:
    """The model cache's loader: code-bearing formats in the worker, the rest here (weights
    through the in-repo architectures, which run no code from the file)."""

    def load(
        name: str,
        path: Path,
        spec: ModelSpec,
        device: torch.device | str,
        fmt: ModelFormat | None,
    ) -> LoadedModel:
        detected = detect_format(Path(path))
        if fmt is not None and fmt is not detected:
            raise InvalidArgument(
                f"model file {path} is not a valid {fmt.value} file "
                f"(it looks like {detected.value})"
            )
        if detected in CODE_FORMATS:
            return worker.load(name, Path(path), spec, device, detected)
        return load_model(name, Path(path), spec, device, detected)

    return load


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit status"
    return f"signal {-code}" if code < 0 else f"status {code}"


def _load_error(remote: RemoteModel, kind: str, message: str) -> P2PAgentError:
    if kind == "resource_exhausted":
        return ResourceExhausted(f"model {remote.name!r} does not fit this device: {message}")
    if kind == "invalid_argument":
        joint = " is " if message.startswith("not ") else ": "
        return InvalidArgument(f"model file {remote.path}{joint}{message}")
    return Internal(f"model {remote.name!r} failed to load in the model worker: {message}")


def _batch_error(name: str, kind: str, message: str, rows: int, requests: int) -> P2PAgentError:
    if kind == "resource_exhausted":
        return ResourceExhausted(
            f"model {name!r} ran out of device memory on a batch of {rows} row(s): {message}"
        )
    # The same words as a model failing in the daemon (engine._model_error).
    return Internal(
        f"model {name!r} failed on a batch of {rows} row(s) ({requests} request(s)): {message}"
    )


def _dtype_of(t: InputTensor) -> dtypes.DTypeInfo:
    if isinstance(t, HostTensor):
        return t.dtype
    info = dtypes.BY_NAME.get(str(t.dtype).removeprefix("torch."))
    if info is None:
        raise InvalidArgument(f"tensors of dtype {t.dtype} cannot be sent to the model worker")
    return info


def _concatenate_into(region: Region, ref: TensorRef, column: Sequence[InputTensor]) -> None:
    """Joins one input's tensors along dimension 0 straight into the shared region: the
    only copy a wire tensor's bytes get on their way to the worker (as in-process)."""
    if all(isinstance(t, HostTensor) for t in column):
        dst = np.ndarray(ref.shape, dtype=ref.dtype.numpy, buffer=region.map, offset=ref.offset)
        np.concatenate([t.array for t in column], out=dst)  # type: ignore[union-attr]
        del dst
        return
    import torch

    count = ref.nbytes // ref.dtype.itemsize
    view = torch.frombuffer(region.map, dtype=ref.dtype.torch_dtype, count=count, offset=ref.offset)
    tensors = [
        host_to_torch(t.dtype, np.array(t.array)) if isinstance(t, HostTensor) else t.cpu()
        for t in column
    ]
    torch.cat(tensors, out=view.view(ref.shape))
    del view


def _copy_out(region: Region | None, ref: TensorRef) -> torch.Tensor:
    """An output copied out of the worker's region (which the next batch overwrites)."""
    info = ref.dtype
    if region is None or ref.nbytes == 0:
        array = np.empty(ref.shape, dtype=info.numpy)
    else:
        count = ref.nbytes // info.itemsize
        array = np.frombuffer(region.map, dtype=info.numpy, count=count, offset=ref.offset)
        array = array.reshape(ref.shape).copy()
    return host_to_torch(info, array)
