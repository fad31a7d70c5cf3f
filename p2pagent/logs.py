"""Logging: one line per record, every line carries the node name; text or JSON.

``setup`` installs the only handler on the root logger, so libraries that log through
``logging`` (grpc's Python layer, asyncio) get the node name too. Python warnings and
exceptions nobody caught (main thread or other threads) are routed through it as well, so
nothing reaches stderr in another shape. In text format a traceback's lines each carry the
record's prefix, so ``grep '\\[node1\\]'`` keeps them; in JSON format the traceback is one
string field of its record.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from types import TracebackType

FORMATS = ("text", "json")


class _TextFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        prefix = f"{ts}.{int(record.msecs):03d} {record.levelname:<7} [{self._node}]"
        line = f"{prefix} {record.name}: {record.getMessage()}"
        if record.exc_info:
            extra = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n{prefix}   {x}" for x in extra)
        return line


class _JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "node": self._node,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def formatter(node: str, fmt: str = "text") -> logging.Formatter:
    """The formatter for ``fmt`` (``text`` or ``json``); every record names ``node``."""
    return _JsonFormatter(node) if fmt == "json" else _TextFormatter(node)


def setup(node: str, level: str = "info", fmt: str = "text", native: bool = False) -> None:
    """Installs the handler. ``native``: also route what C/C++ code writes to fd 2 (the
    daemon; see ``native_log``), which must happen before the handler picks its stream."""
    if native:
        from p2pagent import native_log

        native_log.capture()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(node, fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    grpc_core = logging.getLogger(GRPC_AIO_LOGGER)
    if not any(isinstance(f, ClientGoneFilter) for f in grpc_core.filters):
        grpc_core.addFilter(ClientGoneFilter())
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


#: The logger grpc.aio's server reports a failed handler on.
GRPC_AIO_LOGGER = "grpc._cython.cygrpc"


class ClientGoneFilter(logging.Filter):
    """Keeps grpc.aio's report of a stream write to a caller that had already gone (its
    channel closed or the call cancelled: ``ExecuteBatchError`` raised in core) as one debug
    line. grpc logs it as an error with a traceback, but nothing on the node is wrong and
    the operator has nothing to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        if kind is None or kind.__name__ != "ExecuteBatchError":
            return True
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("p2pagent").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("p2pagent").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


class RateLimitedLog:
    """Logs a given key at most once per ``interval`` seconds (e.g. once per peer per minute)."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self._interval:
            self._last[key] = now
            self._log.warning(msg, *args)
