"""How the model worker's failures read to the daemon's callers: a lost worker (exited,
broke the protocol, stopped answering), and a load or batch the worker answered with an
error kind (``invalid_argument``, ``resource_exhausted``, ``internal``) turned into the
node's own errors with messages that say what to do."""

from __future__ import annotations

import collections
import logging
import subprocess
from pathlib import Path

from p2pagent.errors import Internal, InvalidArgument, P2PAgentError, ResourceExhausted, Unavailable

#: worker.py's log: a retry in a new worker is logged there.
log = logging.getLogger("p2pagent.inference.worker")


class WorkerLost(Exception):
    """The worker exited, broke the protocol or stopped answering (it has been stopped).
    ``queued``: before it got to the request (it was starting, or on another one);
    ``loading``: while it was on the request, a model's load."""

    def __init__(self, why: str, *, hung: bool = False, queued: bool = False) -> None:
        super().__init__(why)
        self.hung = hung
        self.queued = queued
        self.loading = False


def after_loss(
    e: WorkerLost, doing: str, tries: int, loading: bool, name: str = ""
) -> P2PAgentError | None:
    """What a worker lost under a request (its ``tries``-th, 1 or 2) makes of it: None to
    try once more in a new worker, else the error for the callers: Internal where it hung or
    died loading the model both times (the model's doing: not to retry), else Unavailable
    after a second death."""
    if e.hung:
        return Internal(
            f"the model worker {e} while {doing}; a new worker starts on the next request"
        )
    if tries == 2 and loading:
        return load_death(name, str(e))
    if tries == 2:
        return Unavailable(
            f"the model worker {e} while {doing}, twice in a row; a new worker starts on "
            "the next request: retry"
        )
    log.info("%s again in a new model worker", doing)
    return None


def load_death(name: str, why: str) -> P2PAgentError:
    """A model whose load the worker died under twice in a row: the model's doing (or a
    worker that cannot start here), not a worker killed from outside, which the retry in a
    new worker would have survived. Not retried: each try costs two worker starts."""
    return Internal(
        f"model {name!r} cannot be loaded on this node: the model worker {why}, twice in a "
        "row while loading it (the node's log has the worker's last words); check the model "
        "or serve it from another node"
    )


def drain_stderr(proc: subprocess.Popen[bytes], keep: collections.deque[str]) -> None:
    """Keeps the worker's last lines of stderr, bounded, for the message when it dies (a
    thread of its own)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        keep.append(line[:300].decode("utf-8", "replace").rstrip())
    proc.stderr.close()


def exit_text(code: int | None) -> str:
    if code is None:
        return "no exit status"
    return f"signal {-code}" if code < 0 else f"status {code}"


def load_error(name: str, path: Path, folder: bool, kind: str, message: str) -> P2PAgentError:
    """A load the worker refused; ``folder``: a Hugging Face folder (else a model file)."""
    if kind == "resource_exhausted":
        return ResourceExhausted(f"model {name!r} does not fit this node: {message}")
    if kind == "invalid_argument" and folder:
        return InvalidArgument(f"model folder {name!r} does not load: {message}")
    if kind == "invalid_argument":
        joint = " is " if message.startswith("not ") else ": "
        return InvalidArgument(f"model file {path}{joint}{message}")
    return Internal(f"model {name!r} failed to load in the model worker: {message}")


def batch_error(name: str, kind: str, message: str, rows: int, requests: int) -> P2PAgentError:
    if kind == "resource_exhausted":
        return ResourceExhausted(
            f"model {name!r} ran out of memory on a batch of {rows} row(s): {message}"
        )
    # The same words as a model failing in the daemon (engine._model_error).
    return Internal(
        f"model {name!r} failed on a batch of {rows} row(s) ({requests} request(s)): {message}"
    )
