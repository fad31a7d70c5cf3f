"""The project's own small exception tree.

Split by whose fault it is (h11 style): a caller broke a rule (`InvalidArgument`,
`NotFound`, ...), a peer broke the protocol (`RemoteProtocolError`), or this node cannot do it
now (`ResourceExhausted`, `Unavailable`). The API boundary maps each to one gRPC status code
(`p2pagent.transport.errors`), so every error reaches the user as a status with a message
they can act on.
"""

from __future__ import annotations

#: Most characters of a caller's string an error message repeats (``quoted``).
QUOTE_CHARS = 64


class P2PAgentError(Exception):
    """Base of every error this package raises on purpose."""

    #: Name of the grpc.StatusCode this error maps to at the API boundary.
    code = "INTERNAL"


class ConfigError(P2PAgentError):
    """The configuration is unusable; the message names the setting and what to do."""

    code = "INVALID_ARGUMENT"


class InvalidArgument(P2PAgentError):
    """The caller sent something malformed or inconsistent."""

    code = "INVALID_ARGUMENT"


class NotFound(P2PAgentError):
    code = "NOT_FOUND"


class AlreadyExists(P2PAgentError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(P2PAgentError):
    """The request is well formed but the system is not in a state to run it."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(P2PAgentError):
    """A bounded queue, rate limit or memory budget is full; retry later.

    ``retry_after_s``, when known, is how long the caller should wait before trying again:
    the guard sends it in the trailing metadata (``p2pagent-retry-after-ms``) and the client
    sets it on the error it raises."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(P2PAgentError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(P2PAgentError):
    """A peer or resource cannot be reached now; retrying may succeed."""

    code = "UNAVAILABLE"


class PermissionDenied(P2PAgentError):
    code = "PERMISSION_DENIED"


class DataLoss(P2PAgentError):
    """Bytes arrived damaged: what was stored does not match the digest the sender declared.
    Nothing was kept; send it again."""

    code = "DATA_LOSS"


class Internal(P2PAgentError):
    """A bug or an unexpected failure inside this node (for example a model that raised)."""

    code = "INTERNAL"


class RemoteProtocolError(P2PAgentError):
    """A peer sent a payload we cannot read: malformed, wrong version or over a limit.

    Such payloads are counted and dropped; they never crash the node or touch its state.
    """

    code = "INVALID_ARGUMENT"


class UnsupportedVersion(RemoteProtocolError):
    code = "FAILED_PRECONDITION"


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of a caller-supplied value, cut to its first ``limit`` characters.

    Every error that echoes what a caller sent goes through this: an answer must stay small
    whatever was sent (a 1 MiB task id echoed in full would not fit the status message), and
    a log line must not become a copy of the request."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


# ---- the status-code table ----------------------------------------------------------------


def _classes(cls: type[P2PAgentError]) -> list[type[P2PAgentError]]:
    out: list[type[P2PAgentError]] = []
    for sub in cls.__subclasses__():
        out += [sub, *_classes(sub)]
    return out


def _camel(code: str) -> str:
    return "".join(word.capitalize() for word in code.split("_"))


#: Each status code's error class, derived from the tree above: the class named after its
#: code (``NOT_FOUND`` -> ``NotFound``). The one table every boundary uses: the server's
#: statuses (``transport/errors.py``), the codes a failed task carries (``tasks/wire.py``)
#: and the client's errors. A new code is a new class here, nothing else.
BY_CODE: dict[str, type[P2PAgentError]] = {
    cls.code: cls for cls in _classes(P2PAgentError) if cls.__name__ == _camel(cls.code)
}


def error_for_code(code: str, message: str) -> P2PAgentError:
    """The error for status name ``code`` (``Internal`` for a name we do not know)."""
    return BY_CODE.get(code, Internal)(message)
