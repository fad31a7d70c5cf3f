"""Content-addressed chunk store on disk.

Layout under ``root`` (the node's ``<data>/models``)::

    chunks/ab/ab12...ef     one file per distinct chunk, named by its SHA-256 (fan-out by the
                            first byte so no directory grows past a few thousand entries)
    manifests/<id>.json     canonical manifest of every version this node knows locally
    files/<id>.<suffix>     model files materialised for the loader (``assemble``)

Rules that keep it consistent without a journal:

- Every file is written atomically (``atomic.atomic_write``): a chunk file exists only with its
  full, verified content, so "which chunks of a version are present" is simply "which files
  exist". A restarted pull resumes from exactly what is on disk.
- Identical chunks are stored once, whatever version or model they belong to.
- A version is registered by writing its manifest. Pulls write it first (then its chunks
  fill in; ``is_complete`` says when they are all there); uploads write it last, so a cut-off
  upload registers nothing. Chunks of an upload in progress are held by a ``Staging`` so that
  ``gc`` does not collect them before their manifest exists.
- ``gc`` removes chunks no stored manifest (or open staging) references.

All methods do blocking file I/O and are thread-safe: the driver calls them from a thread.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from p2pagent.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from p2pagent.models.atomic import atomic_write, is_temp, remove_stale_temps
from p2pagent.models.config import ModelsConfig
from p2pagent.models.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcReport:
    chunks_removed: int
    bytes_freed: int
    files_removed: int


class ChunkStore:
    """Chunks by SHA-256, manifests by id, and assembled model files, under one directory."""

    def __init__(self, root: str | os.PathLike[str], config: ModelsConfig | None = None) -> None:
        self.root = Path(root)
        self.config = config or ModelsConfig()
        self._chunks = self.root / "chunks"
        self._manifest_dir = self.root / "manifests"
        self._files = self.root / "files"
        for d in (self._chunks, self._manifest_dir, self._files):
            d.mkdir(parents=True, exist_ok=True)
        # No writer can be active yet: anything half-written is from a previous crash.
        stale = remove_stale_temps(self.root)
        if stale:
            log.info("removed %d partial files left by an interrupted write", stale)
        self._lock = threading.RLock()
        self._manifests: dict[str, Manifest] = {}
        self._complete: set[str] = set()
        self._staged: Counter[str] = Counter()
        self._load_manifests()

    def _load_manifests(self) -> None:
        for path in sorted(self._manifest_dir.glob("*.json")):
            try:
                m = Manifest.decode(path.read_bytes(), expected_id=path.stem)
            except (OSError, InvalidArgument) as e:
                # Left in place for an operator to inspect; the version is simply not known.
                log.warning("ignoring unreadable manifest %s: %s", path, e)
                continue
            self._manifests[m.manifest_id] = m

    # ---- chunks --------------------------------------------------------------------------

    def chunk_path(self, digest: str) -> Path:
        return self._chunks / digest[:2] / digest

    def has_chunk(self, digest: str) -> bool:
        return self.chunk_path(digest).is_file()

    def put_chunk(self, data: bytes, digest: str | None = None) -> str:
        """Stores ``data`` under its SHA-256 (computed unless given) and returns the digest.

        A chunk already present is not rewritten. Callers must hold the chunk referenced (a
        stored manifest or a Staging) or the next ``gc`` may remove it.
        """
        digest = digest or hashlib.sha256(data).hexdigest()
        path = self.chunk_path(digest)
        if path.is_file():
            return digest
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, [data], fsync=self.config.fsync)
        return digest

    def write_chunk(self, manifest_id: str, index: int, data: bytes) -> bool:
        """Stores chunk ``index`` of a stored version if ``data`` verifies; False if corrupt.

        Raises NotFound when the manifest is not stored (store it before pulling chunks).
        """
        m = self.get_manifest(manifest_id)
        if not m.verify_chunk(index, data):
            return False
        self.put_chunk(data, m.chunk_hashes[index])
        return True

    def read_chunk(self, manifest_id: str, index: int) -> bytes:
        """Chunk ``index`` of a stored version, for serving to a peer.

        With ``verify_on_read`` a chunk that no longer matches its hash (bit rot) is removed
        and reported as NotFound, so the peer fetches it elsewhere and we do not get
        blacklisted for serving bad data.
        """
        m = self.get_manifest(manifest_id)
        m.chunk_length(index)  # raises InvalidArgument when out of range
        digest = m.chunk_hashes[index]
        try:
            data = self.chunk_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(
                f"chunk {index} of model {m.name!r} ({manifest_id[:12]}) is not on this node"
            ) from None
        if self.config.verify_on_read and hashlib.sha256(data).hexdigest() != digest:
            self._quarantine(digest)
            raise NotFound(
                f"chunk {index} of model {m.name!r} ({manifest_id[:12]}) was corrupt on disk "
                "and has been removed; fetch it from another holder"
            )
        return data

    def iter_chunks(self, manifest_id: str, indices: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """``(index, data)`` for each requested index, in order (serves FetchChunks)."""
        for index in indices:
            yield index, self.read_chunk(manifest_id, index)

    def _quarantine(self, digest: str) -> None:
        with self._lock:
            try:
                self.chunk_path(digest).unlink()
            except FileNotFoundError:
                pass
            self._complete = {
                mid for mid in self._complete if digest not in self._manifests[mid].chunk_hashes
            }
        log.warning("removed corrupt chunk %s", digest)

    # ---- manifests and completeness ------------------------------------------------------

    def put_manifest(self, manifest: Manifest) -> None:
        """Registers a version locally (idempotent). Its chunks may still be missing."""
        mid = manifest.manifest_id
        with self._lock:
            if mid in self._manifests:
                return
            atomic_write(
                self._manifest_dir / f"{mid}.json", [manifest.encode()], fsync=self.config.fsync
            )
            self._manifests[mid] = manifest

    def get_manifest(self, manifest_id: str) -> Manifest:
        with self._lock:
            m = self._manifests.get(manifest_id)
        if m is None:
            raise NotFound(f"model version {manifest_id[:12]} is not known on this node")
        return m

    def has_manifest(self, manifest_id: str) -> bool:
        with self._lock:
            return manifest_id in self._manifests

    def manifests(self) -> list[Manifest]:
        """Every locally stored version, oldest first per name."""
        with self._lock:
            return sorted(self._manifests.values(), key=lambda m: (m.name, m.sort_key()))

    def present(self, manifest_id: str) -> set[int]:
        """Indices of the version's chunks on disk: where a restarted pull resumes."""
        m = self.get_manifest(manifest_id)
        with self._lock:
            if manifest_id in self._complete:
                return set(range(m.chunk_count))
        seen: dict[str, bool] = {}
        have = set()
        for i, digest in enumerate(m.chunk_hashes):
            if digest not in seen:
                seen[digest] = self.has_chunk(digest)
            if seen[digest]:
                have.add(i)
        if len(have) == m.chunk_count:
            with self._lock:
                if manifest_id in self._manifests:
                    self._complete.add(manifest_id)
        return have

    def missing(self, manifest_id: str) -> list[int]:
        m = self.get_manifest(manifest_id)
        have = self.present(manifest_id)
        return [i for i in range(m.chunk_count) if i not in have]

    def is_complete(self, manifest_id: str) -> bool:
        m = self.get_manifest(manifest_id)
        return len(self.present(manifest_id)) == m.chunk_count

    # ---- staging (uploads in progress) ---------------------------------------------------

    def staging(self) -> Staging:
        """A holder for chunks written before their manifest exists (see ``publish``)."""
        return Staging(self)

    def _stage(self, digest: str) -> None:
        with self._lock:
            self._staged[digest] += 1

    def _unstage(self, digests: Iterable[str], discard: bool) -> int:
        """Drops staging holds; with ``discard``, deletes chunks nothing else references."""
        removed = 0
        with self._lock:
            for d in digests:
                self._staged[d] -= 1
                if self._staged[d] <= 0:
                    del self._staged[d]
            if discard:
                referenced = self._referenced()
                for d in digests:
                    if d not in referenced:
                        try:
                            self.chunk_path(d).unlink()
                            removed += 1
                        except FileNotFoundError:
                            pass
        return removed

    def _referenced(self) -> set[str]:
        refs = set(self._staged)
        for m in self._manifests.values():
            refs.update(m.chunk_hashes)
        return refs

    # ---- the model file ------------------------------------------------------------------

    def assemble(self, manifest_id: str) -> Path:
        """Materialises the model file for the loader and returns its path.

        Every chunk and the whole-file SHA-256 are checked before the file appears (atomic
        rename), so the loader never sees unverified bytes. Raises FailedPrecondition while
        chunks are missing.
        """
        m = self.get_manifest(manifest_id)
        target = self._files / f"{manifest_id}{m.format.suffix}"
        if target.is_file():
            return target
        missing = self.missing(manifest_id)
        if missing:
            raise FailedPrecondition(
                f"model {m.name!r} ({manifest_id[:12]}) is incomplete here: {len(missing)} of "
                f"{m.chunk_count} chunks missing; pull it first"
            )
        whole = hashlib.sha256()

        def pieces() -> Iterator[bytes]:
            for i in range(m.chunk_count):
                data = self._verified(m, i)
                whole.update(data)
                yield data

        def check_whole() -> None:
            if whole.hexdigest() != m.sha256:
                raise Internal(
                    f"model {m.name!r} ({manifest_id[:12]}): chunks verify but the whole file "
                    "does not match the manifest's sha256; the manifest is inconsistent, "
                    "republish the model"
                )

        atomic_write(target, pieces(), fsync=self.config.fsync, before_commit=check_whole)
        return target

    def open_reader(self, manifest_id: str) -> io.BufferedReader:
        """A streaming reader over the version's chunks, verified as it goes (no file copy)."""
        m = self.get_manifest(manifest_id)
        return io.BufferedReader(_ChunkReader(self, m), buffer_size=m.chunk_size)

    def _verified(self, m: Manifest, index: int) -> bytes:
        digest = m.chunk_hashes[index]
        try:
            data = self.chunk_path(digest).read_bytes()
        except FileNotFoundError:
            raise FailedPrecondition(
                f"chunk {index} of model {m.name!r} ({m.manifest_id[:12]}) is missing; "
                "pull the model again"
            ) from None
        if hashlib.sha256(data).hexdigest() != digest:
            self._quarantine(digest)
            raise FailedPrecondition(
                f"chunk {index} of model {m.name!r} ({m.manifest_id[:12]}) was corrupt on disk "
                "and has been removed; pull the model again"
            )
        return data

    # ---- deletion and garbage collection -------------------------------------------------

    def delete(self, manifest_id: str) -> None:
        """Forgets a version and its assembled file; its chunks go at the next ``gc``."""
        with self._lock:
            if manifest_id not in self._manifests:
                raise NotFound(f"model version {manifest_id[:12]} is not known on this node")
            for path in self._files.glob(f"{manifest_id}.*"):
                path.unlink(missing_ok=True)
            (self._manifest_dir / f"{manifest_id}.json").unlink(missing_ok=True)
            del self._manifests[manifest_id]
            self._complete.discard(manifest_id)

    def gc(self) -> GcReport:
        """Removes chunks and files no stored manifest (or open staging) references."""
        chunks = freed = files = 0
        with self._lock:
            referenced = self._referenced()
            for fan in self._chunks.iterdir():
                if not fan.is_dir():
                    continue
                for path in fan.iterdir():
                    if is_temp(path.name) or path.name in referenced:
                        continue
                    try:
                        size = path.stat().st_size
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    chunks += 1
                    freed += size
            for path in self._files.iterdir():
                if is_temp(path.name) or path.name.split(".", 1)[0] in self._manifests:
                    continue
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
                files += 1
        return GcReport(chunks_removed=chunks, bytes_freed=freed, files_removed=files)


class Staging:
    """Chunks of an upload whose manifest does not exist yet.

    While open, its chunks survive ``gc``. ``commit`` registers the manifest and lets go;
    ``abort`` lets go and deletes the chunks that nothing else references.
    """

    def __init__(self, store: ChunkStore) -> None:
        self._store = store
        self._digests: list[str] = []
        self._open = True

    def put(self, data: bytes) -> str:
        if not self._open:
            raise FailedPrecondition("staging already committed or aborted")
        digest = hashlib.sha256(data).hexdigest()
        # Held before the write, so a concurrent gc cannot remove it in between.
        self._store._stage(digest)
        self._digests.append(digest)
        self._store.put_chunk(data, digest)
        return digest

    def commit(self, manifest: Manifest) -> None:
        if not self._open:
            raise FailedPrecondition("staging already committed or aborted")
        missing = set(manifest.chunk_hashes) - set(self._digests)
        if missing:
            raise Internal(f"manifest references {len(missing)} chunks this upload never wrote")
        self._store.put_manifest(manifest)
        self._open = False
        self._store._unstage(self._digests, discard=False)

    def abort(self) -> int:
        """Releases the chunks; returns how many were deleted. Idempotent."""
        if not self._open:
            return 0
        self._open = False
        return self._store._unstage(self._digests, discard=True)


class _ChunkReader(io.RawIOBase):
    """Reads a version chunk by chunk, verifying each and the whole at the end."""

    def __init__(self, store: ChunkStore, manifest: Manifest) -> None:
        self._store = store
        self._m = manifest
        self._next = 0
        self._buf = memoryview(b"")
        self._whole = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._buf:
            if self._next >= self._m.chunk_count:
                return 0
            data = self._store._verified(self._m, self._next)
            self._whole.update(data)
            self._next += 1
            if self._next == self._m.chunk_count and self._whole.hexdigest() != self._m.sha256:
                raise Internal(
                    f"model {self._m.name!r}: whole file does not match the manifest's sha256"
                )
            self._buf = memoryview(data)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
