"""The door of the task capability (tasks/admission.py): unknown or malformed models, inputs
over the payload bound, and the per-identity quotas, checked without a daemon."""

from __future__ import annotations

import pytest

from p2pagent.errors import ConfigError, InvalidArgument, NotFound, ResourceExhausted
from p2pagent.tasks import admission
from p2pagent.tasks.admission import IdentityQuotas, ModelSources
from p2pagent.tasks.config import TasksConfig


def _sources(here: set[str] = frozenset(), peers: set[str] = frozenset(),
             published: set[str] = frozenset()) -> ModelSources:  # fmt: skip
    return ModelSources(here=here, peers=peers, published=published.__contains__)


@pytest.mark.parametrize(
    "sources",
    [_sources(here={"m"}), _sources(peers={"m"}), _sources(published={"m"})],
)
def test_a_model_served_here_by_a_peer_or_published_is_admitted(sources: ModelSources) -> None:
    assert admission.check_model("m", sources) == "m"


def test_a_model_nobody_has_is_not_found_naming_it() -> None:
    with pytest.raises(NotFound, match="'nope' is not served by any node and not published"):
        admission.check_model("nope", _sources(here={"m"}, peers={"p"}, published={"q"}))


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "a/b", "x\x00", ".hidden", "m" * 300])
def test_malformed_model_names_are_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument):
        admission.check_model(name, _sources(here={name}))


def test_a_long_unknown_name_is_quoted_short() -> None:
    name = "m" * 128  # as long as a name may be
    with pytest.raises(NotFound) as e:
        admission.check_model(name, _sources())
    assert len(str(e.value)) < 200 and "128 characters" in str(e.value)


def test_inputs_over_the_payload_bound_are_refused_naming_the_knob() -> None:
    cfg = TasksConfig(max_payload_bytes=1000)
    admission.check_inputs(3, 1000, cfg)
    with pytest.raises(InvalidArgument, match=r"1001 bytes.*tasks\.max_payload_bytes"):
        admission.check_inputs(3, 1001, cfg)
    with pytest.raises(InvalidArgument, match="input tensors"):
        admission.check_inputs(admission.MAX_INPUT_TENSORS + 1, 0, cfg)
    assert admission.request_limit(cfg) == 1000 + admission.REQUEST_OVERHEAD_BYTES


def test_quota_of_tasks_per_identity_with_a_retry_hint() -> None:
    q = IdentityQuotas(max_tasks=2, max_bytes=10**9)
    q.admit("alice", "t1", 10, backlog_s=2.0)
    q.admit("alice", "t2", 10, backlog_s=2.0)
    with pytest.raises(ResourceExhausted, match="max_queued_per_identity") as e:
        q.admit("alice", "t3", 10, backlog_s=2.0)
    assert e.value.retry_after_s == 2.0
    q.admit("bob", "t4", 10, backlog_s=0.0)  # another identity is not affected
    q.release("t1")
    q.admit("alice", "t3", 10, backlog_s=0.0)
    assert q.usage("alice") == (2, 20)


def test_quota_of_bytes_per_identity() -> None:
    q = IdentityQuotas(max_tasks=100, max_bytes=100)
    q.admit("alice", "t1", 60, backlog_s=0.0)
    with pytest.raises(ResourceExhausted, match="max_queued_bytes_per_identity") as e:
        q.admit("alice", "t2", 41, backlog_s=0.0)
    assert e.value.retry_after_s == TasksConfig().retry_after_min_s
    q.admit("alice", "t2", 40, backlog_s=0.0)
    q.release("t1")
    q.release("t2")
    q.release("t2")  # twice, or never admitted: nothing
    q.release("never")
    assert q.usage("alice") == (0, 0)


def test_tasks_without_an_owner_count_against_nobody() -> None:
    q = IdentityQuotas(max_tasks=1, max_bytes=1)
    for i in range(5):
        q.admit("", f"t{i}", 100, backlog_s=0.0)
    assert q.usage("") == (0, 0)


def test_the_retry_hint_is_bounded_by_its_settings() -> None:
    cfg = TasksConfig(retry_after_min_s=0.5, retry_after_max_s=2.0)
    assert admission.retry_after_s(1e9, cfg) == 2.0
    assert admission.retry_after_s(0.0, cfg) == 0.5
    assert admission.retry_after_s(1.5, cfg) == 1.5
    q = IdentityQuotas.from_config(TasksConfig(max_queued_per_identity=1, retry_after_max_s=3.0))
    q.admit("alice", "t1", 1, backlog_s=100.0)
    with pytest.raises(ResourceExhausted) as e:
        q.admit("alice", "t2", 1, backlog_s=100.0)
    assert e.value.retry_after_s == 3.0
    with pytest.raises(ConfigError, match="retry_after_max_s"):
        TasksConfig(retry_after_min_s=5.0, retry_after_max_s=1.0).validate()


def test_submissions_per_identity_are_rate_limited_with_a_hint() -> None:
    q = IdentityQuotas(max_tasks=10**6, max_bytes=10**12, submit_rate=10.0)  # bursts of 20
    for i in range(20):
        q.admit("alice", f"a{i}", 1, backlog_s=0.0, now=0.0)
    with pytest.raises(ResourceExhausted, match="submit_rate_per_identity") as e:
        q.admit("alice", "a20", 1, backlog_s=0.0, now=0.0)
    assert e.value.retry_after_s is not None and 0 < e.value.retry_after_s <= 0.1
    q.admit("bob", "b0", 1, backlog_s=0.0, now=0.0)  # another identity has its own
    q.admit("alice", "a20", 1, backlog_s=0.0, now=0.1)  # a token later
    for i in range(100):  # without ``now`` (Infer, not journaled) the rate is not checked
        q.admit("alice", f"i{i}", 1, backlog_s=0.0)
