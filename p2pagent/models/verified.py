"""Which chunks this process has recently seen to match their hash (pure).

Serving a chunk re-hashes it (``verify_on_read``) so that bit rot on disk is caught here
rather than by the peer, which would ban us for its whole pull. Hashing is the largest CPU
cost of serving, though, and most reads are of chunks this process wrote or checked moments
ago: a publisher serving its fresh upload, a swarm member serving each chunk to several peers.
So the store remembers, per chunk (``<version id>/<index>``), its version file's identity
(inode, size, modification time) and when the chunk last matched, and skips the hash while
the file is unchanged and the check is younger than ``reverify_after_s``. A file that was
replaced or written to since has a new identity, and its chunks are hashed again.

The clock is passed in (``now``), so tests control it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: Entries remembered at most (about 100 bytes each); the oldest are forgotten first.
MAX_ENTRIES = 65536


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file is replaced or rewritten (``os.stat`` fields)."""

    inode: int
    size: int
    mtime_ns: int


class VerifiedChunks:
    """Digest -> (file identity, time it last matched its hash), bounded, oldest out first."""

    def __init__(self, reverify_after_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.reverify_after_s = reverify_after_s
        self._max = max_entries
        self._seen: OrderedDict[str, tuple[FileIdentity, float]] = OrderedDict()

    def note(self, digest: str, identity: FileIdentity, now: float) -> None:
        """The file of ``digest`` with ``identity`` matched its hash at ``now``."""
        if self.reverify_after_s <= 0:
            return
        self._seen[digest] = (identity, now)
        self._seen.move_to_end(digest)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def trusted(self, digest: str, identity: FileIdentity, now: float) -> bool:
        """Whether the file may be served without hashing it again."""
        seen = self._seen.get(digest)
        if seen is None:
            return False
        known, at = seen
        if known != identity or now - at >= self.reverify_after_s or now < at:
            del self._seen[digest]
            return False
        return True

    def forget(self, digest: str) -> None:
        self._seen.pop(digest, None)
