"""Which chunks a pull can add to the whole file's SHA-256 now (pure).

A version is loadable only once its whole file matches the manifest's ``sha256``
(``ChunkStore.assemble``). Doing that after the pull reads every byte back from the chunk
files, hashes it a second time and copies it into the model file, all on the pull's critical
path. Instead the puller writes each accepted chunk at its offset in the model file as it
arrives and hashes the file in order on a thread of its own (``puller.WholeFile``); the store
adopts the file when the hash matches (``adopt_assembly``).

Chunks arrive in any order (pulls take them rarest first, ties at random, so that fellow
pullers hold different chunks to swap). SHA-256 needs them in file order: a chunk that
continues the hashed prefix is hashed from memory as it arrives, and the chunks after it that
came early are then read back from the model file just written (from the page cache), so
nothing is held in memory. ``add`` says which indices to hash, in order.
"""

from __future__ import annotations


class InOrderChunks:
    """The hashed prefix of a version's file, in chunks."""

    def __init__(self, chunk_count: int) -> None:
        self.chunk_count = chunk_count
        self._next = 0
        self._early: set[int] = set()

    @property
    def done(self) -> bool:
        """Every chunk was hashed, in order: the hash covers the whole file."""
        return self._next == self.chunk_count

    def add(self, index: int) -> list[int]:
        """Chunk ``index`` was written to the file; returns the indices to hash now, in order
        (``index`` first when it continues the prefix). A repeat or out-of-range index adds
        nothing."""
        if index < self._next or index >= self.chunk_count or index in self._early:
            return []
        if index != self._next:
            self._early.add(index)
            return []
        run = [index]
        self._next += 1
        while self._next in self._early:
            self._early.discard(self._next)
            run.append(self._next)
            self._next += 1
        return run
