"""Replicated state: delta CRDTs in one causal dot map, a pure replica with anti-entropy, and
its SQLite store. See ``replica.py`` for the driver-facing API and ``crdt.py`` for the merge
law."""

from p2pagent.state.config import StateConfig
from p2pagent.state.crdt import DotMap, Kind
from p2pagent.state.messages import DeltaMessage, DigestMessage, Message, Outgoing, RetiredMessage
from p2pagent.state.replica import PersistBatch, Replica
from p2pagent.state.values import Change, ReadResult, ScanPage, WriteResult

__all__ = [
    "Change",
    "DeltaMessage",
    "DigestMessage",
    "DotMap",
    "Kind",
    "Message",
    "Outgoing",
    "PersistBatch",
    "ReadResult",
    "Replica",
    "RetiredMessage",
    "ScanPage",
    "StateConfig",
    "WriteResult",
]
