"""The SHA-256 of a version's whole file, computed while a pull receives its chunks (pure).

A version is loadable only once its whole file matches the manifest's ``sha256``
(``ChunkStore.assemble``). Hashing the file there, after the pull, reads every byte back from
disk and hashes it a second time on the pull's critical path. The pull already holds each
chunk in memory when it arrives, and one holder sends its chunks in order, so the puller feeds
them to this hash as they are accepted and hashes them on another core while the next ones
are received (``Puller``); the store then skips the whole-file pass (``note_whole_checked``).

Chunks arriving out of order are held until the gap before them fills, at most ``max_held``
of them (memory stays bounded); past that, or for a resumed pull that never sees the chunks
already on disk, the hash gives up (``failed``) and ``assemble`` hashes the file itself.
"""

from __future__ import annotations


class InOrderChunks:
    """Puts a version's chunks in file order: ``add`` returns the run that can be hashed now."""

    def __init__(self, chunk_count: int, max_held: int) -> None:
        self.chunk_count = chunk_count
        self.max_held = max_held
        self._next = 0
        self._held: dict[int, memoryview] = {}
        self.failed = False

    @property
    def done(self) -> bool:
        """Every chunk was handed out in order (the hash covers the whole file)."""
        return not self.failed and self._next == self.chunk_count

    def add(self, index: int, data: memoryview) -> list[memoryview]:
        """Chunk ``index`` was accepted; returns the chunks to hash next, in order."""
        if self.failed or index < self._next or index in self._held:
            return []  # a repeat (an identical chunk twice) adds nothing
        self._held[index] = data
        run: list[memoryview] = []
        while self._next in self._held:
            run.append(self._held.pop(self._next))
            self._next += 1
        if len(self._held) > self.max_held:
            self.give_up()
        return run

    def give_up(self) -> None:
        self.failed = True
        self._held.clear()
