"""How many peer acknowledgements a write waits for, from its WriteOptions: the zero value
CONSISTENCY_UNSPECIFIED is this node only (CONSISTENCY_LOCAL), as the default always was."""

from __future__ import annotations

import pytest

from p2pagent._proto import agent_pb2
from p2pagent.api.state import _acks_needed
from p2pagent.errors import InvalidArgument


def opts(consistency: int = 0, acks: int = 0) -> agent_pb2.WriteOptions:
    return agent_pb2.WriteOptions(consistency=consistency, acks=acks)


def test_unset_consistency_is_local() -> None:
    assert agent_pb2.WriteOptions().consistency == agent_pb2.CONSISTENCY_UNSPECIFIED
    assert _acks_needed(opts(), live_peers=4, op="Put") == 0
    assert _acks_needed(opts(agent_pb2.CONSISTENCY_LOCAL), live_peers=4, op="Put") == 0


def test_peers_waits_for_the_acks_asked_and_majority_for_most_live_members() -> None:
    assert _acks_needed(opts(agent_pb2.CONSISTENCY_PEERS, 2), live_peers=4, op="Put") == 2
    assert _acks_needed(opts(agent_pb2.CONSISTENCY_MAJORITY), live_peers=4, op="Put") == 2


@pytest.mark.parametrize(
    ("consistency", "acks", "words"),
    [
        (agent_pb2.CONSISTENCY_UNSPECIFIED, 1, "needs consistency PEERS"),
        (agent_pb2.CONSISTENCY_LOCAL, 1, "needs consistency PEERS"),
        (agent_pb2.CONSISTENCY_PEERS, 0, "needs acks >= 1"),
        (99, 0, "unknown consistency 99"),
    ],
)
def test_contradicting_options_are_refused_naming_the_fix(
    consistency: int, acks: int, words: str
) -> None:
    with pytest.raises(InvalidArgument, match=words):
        _acks_needed(opts(consistency, acks), live_peers=4, op="Put")
