"""Counts of where this node's generations ran and of the sequences peers placed here: plain
integers the placing code bumps and the metrics reader renders (no torch: a node reports
them before its first generation loads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RelayCounts:
    #: Sequences this node's clients sent that ran here.
    placed_locally: int = 0
    #: Sequences this node's clients sent that a peer ran (this node relayed the stream),
    #: the moved ones included.
    relayed_out: int = 0
    #: Of those, sequences that waited in this node's queue first and then moved to a peer
    #: that had room (``generation.move_waiting_after_s``).
    moved: int = 0
    #: Sequences peers placed here (this node ran them and streamed them back).
    relayed_in: int = 0
    #: Sequences peers tried to place here that this node refused (no room to start at
    #: once, relays off, a version or folder it does not serve).
    refused: int = 0
    #: Peers that refused or failed before a sequence's first message, after which this
    #: node tried the next one.
    failed_over: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))
