"""The check an upload passes before it is published: it loads, and it runs.

``check_model`` first reads the archive without running it (``archive_check``: no pickle),
then starts a fresh interpreter (a spawned child process: ``python -m
p2pagent.models.publish_check``, never a fork of the node with its sockets and keys in
memory) that loads the file on the CPU and runs one forward pass on example inputs built
from the metadata's input ports (dynamic dimensions set to ``EXAMPLE_DYNAMIC``), checking the
outputs against the output ports. A TorchScript or torch.export model is code (its ops can
read files: ``torch.from_file``), so with a ``Confinement`` the child reads the file, then
confines itself exactly as the model worker does (``inference.isolation``: Landlock, no
capabilities, another uid where one can run Python) before it loads a byte of it as a model:
the node's key and data folder are out of its reach. The child runs under limits it sets on
itself before it imports torch: address space (``RLIMIT_AS``: ``check_memory_bytes`` plus
``MEMORY_PER_BYTE`` times the file size), CPU seconds (``RLIMIT_CPU``) and no core file;
the node kills it at ``check_timeout_s`` of wall time. Whatever goes wrong, the answer is
InvalidArgument naming it; nothing of the child's output is trusted except its one-line
JSON result file.

A causal language model folder (task ``generation``) is checked the way ``Generate`` runs
it: the child loads the unpacked folder with the generation loader and decodes
``EXAMPLE_NEW_TOKENS`` greedy tokens after a short prompt of the folder's own tokenizer, through
the decode engine, in place of the forward pass on example inputs.

Cost, per publish: one interpreter start with torch (about 1-2 s of CPU; a warm child makes
it while the upload streams), reading the weights (safetensors through a memory map: the
header and the tensors' bytes, each copied out once; a 256 MiB file read whole and copied
took 0.7 s of a check), and one forward pass on a batch of ``EXAMPLE_DYNAMIC`` rows. The
child ends with ``os._exit`` once its answer is written (an orderly exit with torch loaded
took 0.5 s more).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pagent.errors import InvalidArgument, P2PAgentError

#: Size given to every dynamic (-1) dimension of an example input: 2, so a batch dimension
#: is exercised as a batch (exported programs often specialise sizes 0 and 1).
EXAMPLE_DYNAMIC = 2
#: Greedy tokens a decoder folder's check generates, and the text of its prompt.
EXAMPLE_NEW_TOKENS = 4
EXAMPLE_PROMPT = "Hello"
#: Address space the child may use per byte of the model file, beyond its base allowance
#: (the file read whole, the tensors built from it, the model on the CPU).
MEMORY_PER_BYTE = 3
#: Largest result file read back from the child.
MAX_RESULT_BYTES = 64 * 1024
REQUEST = "request.json"
RESULT = "result.json"
#: Longest error message kept from the child.
MAX_MESSAGE = 400
#: Formats whose files hold code (the rest are weights for the in-repo architectures).
CODE_FORMATS = ("torchscript", "export")


@dataclass(frozen=True)
class Confinement:
    """How the checking child fences itself off before loading a code-bearing model: the
    model worker's rules (``inference.isolation.plan``) for ``worker_uid`` and the paths to
    keep out of reach (key, certificates, data folder), with its own work folder writable."""

    worker_uid: int
    protected: tuple[Path, ...]


async def check_model(
    path: Path,
    fmt: str,
    spec: dict[str, Any],
    *,
    timeout_s: float,
    memory_bytes: int,
    confinement: Confinement | None = None,
    warm: WarmChild | None = None,
) -> float:
    """Refuses (InvalidArgument naming the problem) a model file that holds a pickle, does
    not load, or does not run on its metadata's example inputs; returns the check's seconds.

    ``fmt`` is the loader's format name (``inference.formats.ModelFormat``). ``warm``: a
    child started before the file was complete (``WarmChild``; not used for a format whose
    check is confined), closed here whatever happens."""
    from p2pagent.inference.archive_check import check_archive
    from p2pagent.inference.formats import ModelFormat

    start = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, check_archive, path, ModelFormat.parse(fmt))
        if warm is not None and fmt in CODE_FORMATS and confinement is not None:
            warm.close()  # it imported torch unconfined: not for code
            warm = None
        work, limit = await loop.run_in_executor(
            None, _prepare, path, fmt, spec, timeout_s, memory_bytes, confinement,
            warm.work if warm is not None else None,
        )  # fmt: skip
    except BaseException:
        if warm is not None:
            warm.close()
        raise
    try:
        if warm is not None:
            proc = warm.go()
        else:
            # A vfork and exec (``subprocess.Popen``), not the event loop's subprocess_exec,
            # which forks: with gRPC's threads busy, a forked child crashed (SIGSEGV, SIGABRT)
            # before its exec, and gRPC's fork handlers corrupted the node's TLS streams.
            proc = subprocess.Popen(  # noqa: ASYNC220  # a vfork and exec: no wait here
                [sys.executable, "-P", "-m", "p2pagent.models.publish_check", str(work / REQUEST)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=work,
            )  # fmt: skip
        try:
            await loop.run_in_executor(None, proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            raise InvalidArgument(
                f"the model did not load and run its example inputs within {timeout_s:g} s "
                "(models.check_timeout_s): refused"
            ) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                await loop.run_in_executor(None, proc.wait)
        doc = _read_result(work / RESULT)
        if doc is None:
            raise InvalidArgument(_died(proc.returncode or 0, limit))
        if not doc.get("ok"):
            raise InvalidArgument(f"the model failed its check: {str(doc.get('error'))[:600]}")
    finally:
        await loop.run_in_executor(None, shutil.rmtree, work, True)
        if warm is not None:
            warm.close()  # its slot
    return time.monotonic() - start


def _prepare(
    path: Path,
    fmt: str,
    spec: dict[str, Any],
    timeout_s: float,
    memory_bytes: int,
    confinement: Confinement | None,
    work: Path | None = None,
) -> tuple[Path, int]:
    """A folder (fresh, or a warm child's) holding the child's request; returns it and the
    address-space limit."""
    limit = memory_bytes + MEMORY_PER_BYTE * os.path.getsize(path)
    work = work or Path(tempfile.mkdtemp(prefix="p2pagent-check-"))
    sandbox: dict[str, Any] | None = None
    if confinement is not None and fmt in CODE_FORMATS:
        from p2pagent.inference import isolation

        plan = isolation.plan(confinement.worker_uid, list(confinement.protected), work)
        if plan.uid is not None and plan.gid is not None:
            os.chown(work, plan.uid, plan.gid)  # it writes its result there as that uid
        sandbox = {
            "rules": [[r.path, r.access.value] for r in plan.rules],
            "uid": plan.uid,
            "gid": plan.gid,
        }
    request = {
        "path": os.path.abspath(path),
        "format": fmt,
        "spec": spec,
        "memory_bytes": limit,
        "cpu_s": max(1, int(timeout_s)),
        "result": str(work / RESULT),
        "sandbox": sandbox,
    }
    (work / REQUEST).write_text(json.dumps(request))
    return work, limit


class WarmChild:
    """A check child started while its upload still streams: the interpreter and torch
    (about 2 s of a publish on two cores) load meanwhile, then it waits on its stdin for the
    word that its request is written (``go``). Only for checks that run unconfined (a
    confined child must fence itself before it imports torch). It holds one of the node's
    check slots (``CheckSlots``) until ``close``, which also ends it if it was not used."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self.work = Path(tempfile.mkdtemp(prefix="p2pagent-check-"))
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-P", "-m", "p2pagent.models.publish_check", "--warm",
             str(self.work / REQUEST)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.work,
        )  # fmt: skip

    def go(self) -> subprocess.Popen[bytes]:
        """Tells the child its request is in ``work``; child and folder are the caller's
        from now on."""
        proc, self._proc = self._proc, None
        assert proc is not None and proc.stdin is not None
        with contextlib.suppress(OSError):  # died early: its missing result says so
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        return proc

    def close(self) -> None:
        """Ends the child if it was never told to go, and gives its slot back. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            shutil.rmtree(self.work, ignore_errors=True)
        release, self._release = self._release, None
        if release is not None:
            release()


class CheckSlots:
    """At most ``concurrency`` check children at once (later checks wait their turn); an
    upload may start its child early (``warm``) when a slot is free as it begins."""

    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)

    async def warm(self, fmt: str, *, confined: bool) -> WarmChild | None:
        """A warm child for an upload of ``fmt``, or None (a slot is not free, or the check
        of that format must fence itself first)."""
        if (confined and fmt in CODE_FORMATS) or self._slots.locked():
            return None
        await self._slots.acquire()  # free: returns at once
        try:
            return WarmChild(self._slots.release)
        except BaseException:
            self._slots.release()
            raise

    async def check(
        self, path: Path, fmt: str, spec: dict[str, Any], *, warm: WarmChild | None,
        timeout_s: float, memory_bytes: int, confinement: Confinement | None,
    ) -> float:  # fmt: skip
        """``check_model`` in a slot: the warm child's, or the next one free."""
        if warm is not None:
            return await check_model(
                path, fmt, spec, timeout_s=timeout_s, memory_bytes=memory_bytes,
                confinement=confinement, warm=warm,
            )  # fmt: skip
        async with self._slots:
            return await check_model(
                path, fmt, spec, timeout_s=timeout_s, memory_bytes=memory_bytes,
                confinement=confinement,
            )  # fmt: skip


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            doc = json.loads(f.read(MAX_RESULT_BYTES))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _died(returncode: int, limit: int) -> str:
    if returncode == -9 or returncode == -24:  # SIGKILL / SIGXCPU
        return (
            "the model's check ran out of CPU time (models.check_timeout_s) and was stopped: "
            "refused"
        )
    return (
        f"the model's check process ended without an answer (exit {returncode}): the model "
        f"crashed while loading or running, or needed more than {limit} bytes of address "
        "space (models.check_memory_bytes plus 3x the file size): refused"
    )


def check_folder_pack(path: Path, metadata: dict[str, Any]) -> None:
    """A published folder (``inference.hf``): unpacked (every file against the manifest's
    list), then checked as the client checked it before sending (safetensors only, a known
    architecture, no code); the metadata the client sent must be what the folder's own
    config files say. Blocking."""
    from p2pagent.inference.hf import folder, pack

    spec = dict(metadata)
    files = folder.listed_files(spec.get("arch_config") or {})
    root = pack.materialise(path, pack.folder_of(path), files)
    derived = folder.folder_metadata(root, files)
    if derived != spec:
        raise InvalidArgument(
            "the folder's metadata does not match what its config files say: push the "
            "folder with p2pagentctl models push DIR (it derives the metadata)"
        )


# ---- the child ---------------------------------------------------------------------------------


def _limit_self(memory_bytes: int, cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run_check(request: dict[str, Any]) -> str:
    """Loads and runs the model; returns "" when it passes, else what is wrong."""
    from p2pagent.inference import sandbox

    path = Path(request["path"])
    source = None
    fence = request.get("sandbox")
    if fence is not None:
        # Read while the file is still reachable; from here on the model's code runs fenced.
        source = io.BytesIO(path.read_bytes())
        report = sandbox.confine(
            [sandbox.Rule(str(p), sandbox.Access(str(a))) for p, a in fence["rules"]],
            fence["uid"],
            fence["gid"],
        )
        if not report.landlock_abi and fence["uid"] is None:
            return f"the check could not confine itself ({report.landlock_error}): refused"
    # torch only now: Landlock binds the calling thread and the threads it starts later, so a
    # thread torch started before the fence (it starts some at import) would stay outside it.
    import torch

    from p2pagent.inference import loading
    from p2pagent.inference.formats import ModelFormat
    from p2pagent.inference.runner import BatchRunner
    from p2pagent.inference.spec import DYNAMIC, ModelSpec

    torch.set_num_threads(1)
    spec = ModelSpec.from_dict(request["spec"])
    fmt = ModelFormat.parse(request["format"])
    if fmt is ModelFormat.HF_FOLDER and spec.arch_config.get("task") == "generation":
        return _run_generation_check(path, spec)
    # Weights through a memory map: only the tensors' bytes are read, not the whole file
    # twice over (read, then copied) as a serving node reads it.
    model = loading.load_model("check", path, spec, "cpu", fmt, source=source, mapped=True)
    inputs = [
        torch.zeros(
            [EXAMPLE_DYNAMIC if d == DYNAMIC else d for d in port.shape], dtype=port.torch_dtype
        )
        for port in spec.inputs
    ]
    (outputs,), _ = BatchRunner(torch.device("cpu")).run(model, [inputs])
    for port, out in zip(spec.outputs, outputs):
        if out.dtype != port.torch_dtype:
            return (
                f"output {port.name!r} is {out.dtype} on the example inputs; the metadata "
                f"declares {port.dtype}"
            )
        shape = list(out.shape)
        if len(shape) != len(port.shape) or any(
            want not in (DYNAMIC, have) for want, have in zip(port.shape, shape)
        ):
            return (
                f"output {port.name!r} has shape {shape} on the example inputs; the metadata "
                f"declares {list(port.shape)} (-1 = any size)"
            )
    return ""


def _run_generation_check(path: Path, spec: Any) -> str:
    """Loads a decoder folder as ``Generate`` does and decodes a few greedy tokens."""
    from p2pagent.inference.generation.config import GenerationConfig
    from p2pagent.inference.generation.engine import DecodeEngine, FinishEvent
    from p2pagent.inference.generation.folder import load_decoder_folder
    from p2pagent.inference.generation.sampling import SamplingParams
    from p2pagent.inference.hf import pack
    from p2pagent.inference.hf.folder import listed_files

    root = pack.materialise(path, pack.folder_of(path), listed_files(spec.arch_config))
    folder = load_decoder_folder(root)
    prompt = folder.encode(EXAMPLE_PROMPT) or [0]
    engine = DecodeEngine(folder, GenerationConfig(max_running=1))
    engine.submit(prompt, SamplingParams(max_new_tokens=EXAMPLE_NEW_TOKENS))
    tokens = 0
    for _ in range(EXAMPLE_NEW_TOKENS + len(prompt) + 2):
        for event in engine.step():
            if not isinstance(event, FinishEvent):
                tokens += 1
            elif event.error:
                return f"generating {EXAMPLE_NEW_TOKENS} tokens failed: {event.error}"
            else:
                return ""
    return f"a greedy generation of {EXAMPLE_NEW_TOKENS} tokens did not finish ({tokens} made)"


def _child(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    _limit_self(int(request["memory_bytes"]), int(request["cpu_s"]))
    try:
        error = _run_check(request)
    except P2PAgentError as e:
        error = str(e)
    except (MemoryError, ImportError) as e:
        # An address-space limit too small for torch itself fails its import.
        error = (
            f"the check needs more than {request['memory_bytes']} bytes of address space "
            f"(models.check_memory_bytes plus 3x the file size): {type(e).__name__}: {e}"
        )
    except Exception as e:  # anything the model raises is the model's failure
        error = f"loading or running it raised {type(e).__name__}: {e}"
    error = error.replace(request["path"], "the model file")[:MAX_MESSAGE]
    doc = {"ok": not error, "error": error}
    with contextlib.suppress(OSError):
        Path(request["result"]).write_text(json.dumps(doc))
    return 0


def _exit_now(code: int) -> None:
    """Ends the child at once: its answer is written, and an interpreter's orderly exit
    with torch loaded took about 0.5 s of every publish (the node waits for the exit)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _warm_child(request_path: str) -> int:
    """Imports what the check needs, then waits for ``go`` (EOF: not needed after all)."""
    import torch  # noqa: F401  # the point: loaded while the upload streams

    from p2pagent.inference import loading  # noqa: F401
    from p2pagent.inference.runner import BatchRunner  # noqa: F401

    if not sys.stdin.readline():
        return 0
    return _child(request_path)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if sys.argv[1] == "--warm":
        _exit_now(_warm_child(sys.argv[2]))
    _exit_now(_child(sys.argv[1]))
