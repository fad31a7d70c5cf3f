"""Our errors as OpenAI's JSON error shape with the right HTTP status.

The status follows from the error's code (the same ``code`` that picks the gRPC status in
``transport/errors.py``), so every error class of ``p2pagent.errors`` has exactly one answer
here too. The body is what OpenAI's clients parse::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "top_p",
               "code": "invalid_argument"}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from p2pagent import errors

#: gRPC code name -> (HTTP status, OpenAI error type).
HTTP_OF_CODE: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "invalid_request_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "DEADLINE_EXCEEDED": (504, "timeout_error"),
    "UNAVAILABLE": (503, "overloaded_error"),
    "DATA_LOSS": (500, "api_error"),
    "INTERNAL": (500, "api_error"),
}


class Unauthenticated(errors.PermissionDenied):
    """The caller presented no usable client certificate: 401, not 403."""


class PayloadTooLarge(errors.InvalidArgument):
    """The request body is over ``openai.max_request_bytes``: 413."""


@dataclass(frozen=True)
class HttpError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class ParamError(errors.InvalidArgument):
    """A bad request parameter, named in the message and in OpenAI's ``param`` field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"parameter {errors.quoted(param)}: {message}")
        self.param = param[: errors.QUOTE_CHARS]


def http_error(exc: errors.P2PAgentError) -> HttpError:
    status, kind = HTTP_OF_CODE.get(exc.code, (500, "api_error"))
    code = exc.code.lower()
    if isinstance(exc, Unauthenticated):
        status, kind, code = 401, "authentication_error", "unauthenticated"
    elif isinstance(exc, PayloadTooLarge):
        status, code = 413, "request_too_large"
    elif isinstance(exc, errors.NotFound):
        code = "model_not_found"
    headers: dict[str, str] = {}
    retry = getattr(exc, "retry_after_s", None)
    if status == 429 and retry is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry)))
    body = {
        "error": {
            "message": str(exc) or code,
            "type": kind,
            "param": exc.param if isinstance(exc, ParamError) else None,
            "code": code,
        }
    }
    return HttpError(status, body, headers)


def internal_error() -> HttpError:
    """A bug of ours: the caller learns nothing but that, the log has the traceback."""
    return http_error(errors.Internal("internal error in the OpenAI door; see the node's log"))
