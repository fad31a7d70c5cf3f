"""The log filter for grpc.aio's report of a write to a caller that had already gone."""

from __future__ import annotations

import logging
import sys

from p2pagent.logs import GRPC_AIO_LOGGER, ClientGoneFilter


class ExecuteBatchError(Exception):
    """Stands in for grpc._cython.cygrpc.ExecuteBatchError (matched by name)."""


def _record(exc: BaseException | None) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord(
        GRPC_AIO_LOGGER, logging.ERROR, __file__, 1,
        "ExecuteBatchError raised in core by servicer method [%s]", ("/x",), exc_info,
    )  # fmt: skip


def test_a_write_to_a_gone_caller_becomes_a_debug_line_without_traceback() -> None:
    logger = logging.getLogger(GRPC_AIO_LOGGER)
    before = logger.level
    try:
        logger.setLevel(logging.INFO)
        record = _record(ExecuteBatchError("Failed execute_batch"))
        assert not ClientGoneFilter().filter(record)  # dropped at info
        logger.setLevel(logging.DEBUG)
        record = _record(ExecuteBatchError("Failed execute_batch"))
        assert ClientGoneFilter().filter(record)
        assert record.levelno == logging.DEBUG and record.exc_info is None
    finally:
        logger.setLevel(before)


def test_other_errors_from_grpc_keep_their_level_and_traceback() -> None:
    record = _record(RuntimeError("a real bug"))
    assert ClientGoneFilter().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    plain = _record(None)
    assert ClientGoneFilter().filter(plain) and plain.levelno == logging.ERROR
