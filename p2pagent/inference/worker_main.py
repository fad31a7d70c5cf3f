"""The model worker process: loads and runs code-bearing models away from the node's key.

Started by the daemon (``p2pagent.inference.worker``) as ``python -m
p2pagent.inference.worker_main FD`` with one inherited descriptor, its end of the control
socket, and nothing else. It imports torch, reads the ``init`` message (sandbox rules, uid,
threads), confines itself (``sandbox.confine``) and only then answers ``hello``; every model
it ever loads is loaded after that, from a file descriptor the daemon opened (the worker could
not open the model's path itself).

Requests, one at a time in arrival order, each answered once (see worker_wire for the
framing):

- ``load`` {key, format, device, outputs} + the model file's fd -> {ok, nbytes} or an error
- ``unload`` {key} -> no answer
- ``inbuf`` {size, slot} + a memfd: the daemon's new input region for that slot -> no answer
- ``run`` {key, slot, inputs: [TensorRef]} -> {ok, outputs: [TensorRef], outbuf?} (+ memfd
  when the slot's output region grew) or an error

Slots (``worker_wire.SLOTS``): each has its own input and output region, so the daemon can
hand over the next batch while one runs (it waits in the socket; the worker goes on to it
without sleeping) and read one batch's outputs while the next one's are being written.
- ``probe`` {paths}: tries to open each path here, inside the sandbox -> {results} (the
  isolation tests use it: the strongest evidence is the worker's own failed open)
- ``warm`` {architecture}: imports that folder architecture's code ahead of its load -> {ok}

An error answer is {ok: false, kind, message}; ``kind`` is ``invalid_argument`` (the model
does not load), ``resource_exhausted`` (out of memory) or ``internal`` (the model raised).
The worker exits when the channel closes, and with the daemon (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import gc
import io
import os
import resource
import signal
import socket
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

from p2pagent.inference import sandbox, worker_wire
from p2pagent.inference.formats import ModelFormat
from p2pagent.inference.isolation import EXIT_ON_LOAD_ENV
from p2pagent.inference.worker_wire import Region, TensorRef

# Before torch is imported: every torch.load in this process is weights_only, even torch's own
# fallbacks inside torch.export.load (the daemon also refuses pickled archives before handing
# one over: inference.archive_check).
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"

_PR_SET_PDEATHSIG = 1


class _Failure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Worker:
    def __init__(self, sock: socket.socket, memory_limit: int = 0) -> None:
        import torch

        self.torch = torch
        self.sock = sock
        #: Bytes of the data segment this process may use (RLIMIT_DATA); 0: no limit.
        self.memory_limit = memory_limit
        #: key -> (what to call: the module or its forward, output names, device)
        self.models: dict[int, tuple[Any, list[str], Any]] = {}
        self.inputs: list[Region | None] = [None] * worker_wire.SLOTS
        self.outputs: list[Region | None] = [None] * worker_wire.SLOTS
        # Batches by their request's bytes: a request the daemon sent before (the same
        # model, slot and input layout: the common case) skips decoding and finding its
        # model and input views again; it runs straight away. Dropped with their model or
        # region. And the output views and answer, by slot and output layout.
        self.prepared: dict[bytes, _Batch] = {}
        self.output_plans: dict[tuple[Any, ...], tuple[bytes, list[Any]]] = {}

    # ---- requests ------------------------------------------------------------------------

    def serve(self) -> None:
        with self.torch.inference_mode():  # this process only ever runs forward passes
            self._serve()

    def _serve(self) -> None:
        sock, prepared = self.sock, self.prepared
        while True:
            try:
                data, fds = worker_wire.receive_bytes(sock)
                batch = None if fds else prepared.get(data)
                message = worker_wire.decode(data, fds) if batch is None else None
            except (worker_wire.ChannelClosed, OSError):
                return
            reply: dict[str, Any] | bytes | None
            try:
                if batch is not None:
                    reply, reply_fds = self.forward(batch)
                else:
                    assert message is not None
                    reply, reply_fds = self.handle(message.get("op"), message, fds, data)
            except _Failure as f:
                reply, reply_fds = {"ok": False, "kind": f.kind, "message": str(f)[:4000]}, []
            if isinstance(reply, bytes):  # a batch's answer, packed once per output layout
                self.sock.sendall(reply)
            elif reply is not None:
                worker_wire.send(self.sock, reply, reply_fds)

    def handle(
        self, op: Any, message: dict[str, Any], fds: list[int], data: bytes = b""
    ) -> tuple[dict[str, Any] | bytes | None, list[int]]:
        """One request; ``data``: its bytes (a batch is kept under them, ``prepared``)."""
        if op == "run":
            return self.run(message, data)
        if op == "load":
            return self.load(message, fds), []
        if op == "unload":
            self.models.pop(int(message["key"]), None)
            self.prepared.clear()
            return None, []
        if op == "inbuf":
            slot = _slot(message)
            self.prepared.clear()
            old = self.inputs[slot]
            if old is not None:
                old.close()
            self.inputs[slot] = Region.adopt(fds[0], int(message["size"]))
            return None, []
        if op == "probe":
            return {"ok": True, "results": {p: _try_open(p) for p in message["paths"]}}, []
        if op == "warm":
            return self.warm(message), []
        for fd in fds:
            os.close(fd)
        raise _Failure("internal", f"unknown request {str(op)[:32]!r}")

    def warm(self, message: dict[str, Any]) -> dict[str, Any]:
        """Imports what loading a folder of this architecture needs (transformers and its
        modeling code) before any such load comes: the daemon asks when one is published."""
        from p2pagent.errors import InvalidArgument
        from p2pagent.inference.hf import model as hf_model

        try:
            hf_model.architecture_class(str(message.get("architecture"))[:200])
        except InvalidArgument as e:
            raise _Failure("invalid_argument", str(e)) from None
        return {"ok": True}

    def load(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if os.environ.get(EXIT_ON_LOAD_ENV):
            os._exit(3)  # tests: a model that kills its worker at every load
        torch = self.torch
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise _Failure("internal", "a load request without its model file")
        fmt, device = str(message["format"]), torch.device(str(message["device"]))
        if fmt == ModelFormat.HF_FOLDER.value:
            try:
                module = self.load_folder(fds[0], message, device)
            finally:
                os.close(fds[0])
            return self.keep(message, module, device)
        with os.fdopen(fds[0], "rb") as f:
            data = io.BytesIO(f.read())
        try:
            if fmt == ModelFormat.TORCHSCRIPT.value:
                module = torch.jit.load(data, map_location=device)
            elif fmt == ModelFormat.TORCH_EXPORT.value:
                with warnings.catch_warnings():
                    # The archive's read-only bytes wrapped as tensors; copied to the device.
                    warnings.filterwarnings("ignore", "The given buffer is not writable")
                    module = torch.export.load(data).module().to(device)
            else:
                raise _Failure("invalid_argument", f"the worker runs no {fmt} models")
        except _Failure:
            raise
        except Exception as e:
            torchscript = fmt == ModelFormat.TORCHSCRIPT.value
            kind = "torchscript archive" if torchscript else "torch.export program"
            raise _Failure("invalid_argument", f"not a valid {kind}: {e}") from None
        return self.keep(message, module, device)

    def keep(self, message: dict[str, Any], module: Any, device: Any) -> dict[str, Any]:
        from p2pagent.inference.loading import module_nbytes

        names = [str(n) for n in message["outputs"]]
        self.models[int(message["key"])] = (_entry_point(module), names, device)
        return {"ok": True, "nbytes": module_nbytes(module)}

    def load_folder(self, fd: int, message: dict[str, Any], device: Any) -> Any:
        """A Hugging Face folder from its pack (hf.worker_load): the model's outputs by
        port name, like any model's."""
        from p2pagent.errors import InvalidArgument, ResourceExhausted
        from p2pagent.inference.hf import worker_load

        try:
            module = worker_load.load_from_pack(
                fd, message.get("files"), message.get("architecture"), message.get("head"),
                self.memory_limit,
            )  # fmt: skip
            return module.to(device)
        except InvalidArgument as e:
            raise _Failure("invalid_argument", str(e)) from None
        except ResourceExhausted as e:
            raise _Failure("resource_exhausted", str(e)) from None
        except Exception as e:
            if not _out_of_memory(self.torch, e):
                raise _Failure("invalid_argument", f"it does not load: {e}") from None
        # Outside the except block: the failed allocation's frames (and what they hold) go.
        gc.collect()
        raise _Failure("resource_exhausted", self.over_limit("loading it"))

    def over_limit(self, doing: str) -> str:
        from p2pagent.inference.hf.worker_load import KNOB

        if self.memory_limit <= 0:
            return f"the model worker ran out of memory {doing}"
        return (
            f"the model worker ran out of memory {doing} ({KNOB} = "
            f"{self.memory_limit / 2**20:.0f} MiB): raise {KNOB} or serve it on a larger node"
        )

    def run(
        self, message: dict[str, Any], data: bytes = b""
    ) -> tuple[dict[str, Any] | bytes, list[int]]:
        entry = self.models.get(int(message["key"]))
        slot = _slot(message)
        if entry is None or self.inputs[slot] is None:
            raise _Failure("internal", "a batch for a model this worker has not loaded")
        module, names, device = entry
        batch = _Batch(module, names, device, slot, self.input_tensors(slot, message["inputs"]))
        if data:
            if len(self.prepared) >= 64:
                self.prepared.clear()
            self.prepared[data] = batch
        return self.forward(batch)

    def forward(self, batch: _Batch) -> tuple[dict[str, Any] | bytes, list[int]]:
        """Runs a batch whose inputs are in its slot's region; its answer."""
        torch = self.torch
        module, names, device, inputs = batch.module, batch.names, batch.device, batch.inputs
        try:
            if device.type != "cpu":
                inputs = [t.to(device) for t in inputs]
            outs = _as_list(torch, module(*inputs), names)
            outs = [o if o.is_cpu else o.cpu() for o in outs]
        except _Failure:
            raise
        except torch.OutOfMemoryError as e:  # the device's memory
            raise _Failure("resource_exhausted", str(e)) from None
        except Exception as e:
            if not _out_of_memory(torch, e):
                raise _Failure("internal", f"{type(e).__name__}: {e}") from None
            failed = True
        else:
            failed = False
        if failed:  # outside the except block: the failed allocation's frames go first
            gc.collect()
            raise _Failure("resource_exhausted", self.over_limit("on this batch"))
        return self.write_outputs(batch.slot, outs)

    def input_tensors(self, slot: int, raw: Any) -> list[Any]:
        """Tensor views over the slot's input region (no copy)."""
        region = self.inputs[slot]
        assert region is not None
        if not isinstance(raw, list):
            raise _Failure("internal", "a batch with malformed input references")
        try:
            return [
                _view(self.torch, region, TensorRef.checked(r, region.size, "input")) for r in raw
            ]
        except worker_wire.ChannelClosed as e:
            raise _Failure("internal", f"a batch with malformed input references ({e})") from None

    def write_outputs(self, slot: int, outs: list[Any]) -> tuple[dict[str, Any] | bytes, list[int]]:
        signature = (slot, *((o.dtype, o.shape) for o in outs))
        plan = self.output_plans.get(signature)
        if plan is not None:  # outputs shaped as before: the same views, the same answer
            packed, views = plan
            for dst, o in zip(views, outs):
                if dst is not None:
                    dst.copy_(o)
            return packed, []
        from p2pagent.inference import dtypes

        specs = []
        for o in outs:
            info = dtypes.BY_NAME.get(str(o.dtype).removeprefix("torch."))
            if info is None:
                raise _Failure("internal", f"an output of dtype {o.dtype} (not servable)")
            specs.append((info, tuple(int(d) for d in o.shape)))
        refs, needed = worker_wire.layout(specs)
        reply: dict[str, Any] = {"ok": True, "outputs": [r.pack() for r in refs]}
        fds: list[int] = []
        region = self.outputs[slot]
        if region is None or region.size < needed:
            self.output_plans = {k: v for k, v in self.output_plans.items() if k[0] != slot}
            if region is not None:
                region.close()
            region = self.outputs[slot] = Region.create(needed, "p2pagent-worker-out")
            reply["outbuf"] = region.size
            fds = [region.fd]
        views = [_view(self.torch, region, r) if r.nbytes else None for r in refs]
        for dst, o in zip(views, outs):
            if dst is not None:
                dst.copy_(o)
        if len(self.output_plans) > 64:
            self.output_plans.clear()
        answer = msgpack.packb({"ok": True, "outputs": reply["outputs"]}, use_bin_type=True)
        self.output_plans[signature] = (answer, views)
        return reply, fds


@dataclass(frozen=True)
class _Batch:
    """A batch request as the worker runs it: the model's entry point, its output names and
    device, the slot and the views over the slot's input region."""

    module: Any
    names: list[str]
    device: Any
    slot: int
    inputs: list[Any]


def _slot(message: dict[str, Any]) -> int:
    slot = message.get("slot")
    if not isinstance(slot, int) or not 0 <= slot < worker_wire.SLOTS:
        raise _Failure("internal", f"a request for slot {str(slot)[:16]!r}")
    return slot


def _entry_point(module: Any) -> Any:
    """What a batch calls: the module's ``forward`` where no hook is registered on it (so
    ``nn.Module.__call__``'s hook checks are not paid per batch), else the module (a
    torch.export module checks its inputs in a forward pre-hook)."""
    import torch

    hooks = (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    )  # fmt: skip
    if not isinstance(module, torch.nn.Module) or any(getattr(module, h, None) for h in hooks):
        return module
    from torch.nn.modules import module as nn_module

    global_hooks = (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )  # fmt: skip
    if any(getattr(nn_module, h, None) for h in global_hooks):
        return module
    return module.forward


def _view(torch: Any, region: Region, ref: TensorRef) -> Any:
    """A tensor over the region's bytes (no copy)."""
    dtype = getattr(torch, ref.dtype.name)
    count = ref.nbytes // ref.dtype.itemsize
    if count == 0:
        return torch.empty(ref.shape, dtype=dtype)
    return torch.frombuffer(region.map, dtype=dtype, count=count, offset=ref.offset).view(ref.shape)


def _as_list(torch: Any, result: Any, names: list[str]) -> list[Any]:
    """The model's return value as tensors in output-port order (checked again by the
    daemon: counts and rows)."""
    if isinstance(result, torch.Tensor):
        values = [result]
    elif isinstance(result, dict):
        missing = [n for n in names if n not in result]
        if missing:
            raise _Failure(
                "internal",
                f"returned no output named {missing[0]!r} (it returned {sorted(result)})",
            )
        values = [result[n] for n in names]
    elif isinstance(result, list | tuple):
        values = list(result)
    else:
        raise _Failure("internal", f"returned a {type(result).__name__}, not tensors")
    if len(values) > worker_wire.MAX_OUTPUTS:
        raise _Failure("internal", f"returned {len(values)} outputs")
    for i, v in enumerate(values):
        if not isinstance(v, torch.Tensor):
            raise _Failure("internal", f"output {i} is a {type(v).__name__}, not a tensor")
    return values


def _out_of_memory(torch: Any, e: BaseException) -> bool:
    """A failed allocation (the memory limit, or the device's memory), not a model error."""
    if isinstance(e, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


def _try_open(path: Any) -> str:
    """Returns "opened" or the error's name (EACCES...), trying a folder listing for folders."""
    import errno

    try:
        if os.path.isdir(str(path)):
            os.listdir(str(path))
        else:
            os.close(os.open(str(path), os.O_RDONLY))
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "opened"


def _init(sock: socket.socket) -> tuple[sandbox.SandboxReport, int, int]:
    message, _ = worker_wire.receive(sock)
    rules = [sandbox.Rule(str(p), sandbox.Access(str(a))) for p, a in message["rules"]]
    uid, gid = message.get("uid"), message.get("gid")
    report = sandbox.confine(
        rules, int(uid) if uid is not None else None, int(gid) if gid is not None else None
    )
    # The data segment (heap and private anonymous memory: tensors), not the address space:
    # shared regions, mapped libraries and CUDA's reservations do not count against it.
    limit = int(message.get("memory_bytes", 0))
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    # torch only now: Landlock binds the calling thread and the threads it starts later, so a
    # thread torch started before the fence (it starts some at import) would stay outside it.
    import torch

    threads = int(message.get("threads", 0))
    if threads > 0:
        torch.set_num_threads(threads)
    return report, int(message.get("parent", 0)), limit


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        report, parent, limit = _init(sock)
    except (OSError, worker_wire.ChannelClosed, KeyError, ValueError) as e:
        worker_wire.send(sock, {"ok": False, "kind": "internal", "message": f"sandbox: {e}"})
        return 1
    if parent and os.getppid() != parent:
        return 1  # the daemon died before the death signal was armed
    worker_wire.send(
        sock,
        {
            "ok": True,
            "pid": os.getpid(),
            "uid": report.uid,
            "gid": report.gid,
            "no_new_privs": report.no_new_privs,
            "capabilities_dropped": report.capabilities_dropped,
            "landlock_abi": report.landlock_abi,
            "landlock_error": report.landlock_error,
        },
    )
    Worker(sock, limit).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
