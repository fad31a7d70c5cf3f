"""The rules of a multiplexed stream's window, driven directly (no grpc, no asyncio)."""

from __future__ import annotations

import pytest

from p2pagent.errors import InvalidArgument, ResourceExhausted
from p2pagent.transport.request_window import Action, Overrun, RequestWindow


def window(limit: int = 2) -> RequestWindow:
    return RequestWindow(limit, "transport.stream_max_in_flight")


def test_requests_run_until_their_answer_is_written_not_merely_computed() -> None:
    w = window(2)
    assert w.arrive(1, cancel=False).action is Action.RUN
    assert w.arrive(2, cancel=False).action is Action.RUN
    w.answered(1)
    # Computed but unread: still held, so the bound still applies.
    refused = w.arrive(3, cancel=False)
    assert refused.action is Action.REFUSE
    assert isinstance(refused.error, ResourceExhausted)
    assert "transport.stream_max_in_flight = 2" in str(refused.error)
    w.written(1)
    w.written(None)  # the refusal's answer
    assert w.arrive(3, cancel=False).action is Action.RUN
    assert w.in_flight == 2


def test_an_id_in_flight_cannot_be_reused_until_written() -> None:
    w = window(4)
    w.arrive(7, cancel=False)
    verdict = w.arrive(7, cancel=False)
    assert verdict.action is Action.REFUSE
    assert isinstance(verdict.error, InvalidArgument)
    assert "already in flight" in str(verdict.error)
    w.answered(7)
    assert w.arrive(7, cancel=False).action is Action.REFUSE  # answer not read yet
    w.written(7)
    assert w.arrive(7, cancel=False).action is Action.RUN  # free again


def test_cancel_applies_only_to_a_running_request() -> None:
    w = window(4)
    w.arrive(1, cancel=False)
    assert w.arrive(1, cancel=True).action is Action.CANCEL
    w.answered(1)
    # Already answered (the cancel crossed the answer) or never sent: nothing to do.
    assert w.arrive(1, cancel=True).action is Action.IGNORE
    assert w.arrive(42, cancel=True).action is Action.IGNORE
    assert w.in_flight == 1


def test_a_client_sending_without_reading_overruns() -> None:
    w = window(2)
    w.arrive(1, cancel=False)
    w.arrive(2, cancel=False)
    assert w.arrive(3, cancel=False).action is Action.REFUSE
    assert w.arrive(4, cancel=False).action is Action.REFUSE
    with pytest.raises(Overrun, match="without reading"):
        w.arrive(5, cancel=False)
    # Overrun is a ResourceExhausted: the stream ends with that status.
    assert issubclass(Overrun, ResourceExhausted)


def test_refusals_of_unreadable_messages_count_too() -> None:
    w = window(1)
    assert w.refuse(InvalidArgument("bad")).action is Action.REFUSE
    with pytest.raises(Overrun):
        w.refuse(InvalidArgument("bad"))


def test_finished_once_half_closed_and_every_answer_written() -> None:
    w = window(2)
    w.arrive(1, cancel=False)
    w.arrive(1, cancel=False)  # a refusal owed too
    w.half_close()
    assert not w.finished
    w.answered(1)
    w.written(1)
    assert not w.finished  # the refusal is not written yet
    w.written(None)
    assert w.finished
    late = w.arrive(2, cancel=False)
    assert late.action is Action.REFUSE
    assert "half-closed" in str(late.error)


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stream_max_in_flight"):
        RequestWindow(0, "transport.stream_max_in_flight")
