"""Content-addressed chunk store on disk.

Layout under ``root`` (the node's ``<data>/models``)::

    chunks/ab/ab12...ef     one file per distinct chunk, named by its SHA-256 (fan-out by the
                            first byte so no directory grows past a few thousand entries)
    manifests/<id>.json     canonical manifest of every version this node knows locally
    files/<id>.<suffix>     model files materialised for the loader (``assemble``, or written
                            by a fresh pull as its chunks arrive: ``open_assembly``)
    unsynced/<id>           marker: a pull of this version may have written chunks without
                            fsync (``begin_pull`` .. ``seal``)

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
- Pulls defer fsync: ``begin_pull`` durably writes an ``unsynced/<id>`` marker, chunks are then
  written without fsync (``write_chunk(sync=False)``) and made durable in batches
  (``sync_chunks``) overlapping the transfer, and ``seal`` syncs the rest and removes the
  marker. A version is complete only without a marker, so nothing is advertised before its
  chunks are durable. After a power cut a renamed chunk could hold garbage: a marker found at
  open means "hash every chunk of this version on disk before trusting it" (``present``).
- Serving and ``assemble`` skip the re-hash of chunk files this process wrote or checked
  recently and that are unchanged since (``verified.VerifiedChunks``, ``reverify_after_s``);
  ``assemble`` skips the whole-file hash of a version whose pull already hashed its bytes in
  order as they arrived (``note_whole_checked``, ``whole_hash``).

All methods do blocking file I/O and are thread-safe: the driver calls them from a thread.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from p2pagent.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from p2pagent.models.atomic import (
    DISK_FULL,
    TEMP_PREFIX,
    atomic_write,
    disk_full_error,
    fsync_dir,
    is_temp,
    remove_stale_temps,
)
from p2pagent.models.chunk_copy import copy_trusted_chunks
from p2pagent.models.chunk_reader import VerifiedChunkReader
from p2pagent.models.config import ModelsConfig
from p2pagent.models.manifest import Manifest
from p2pagent.models.staging import Staging
from p2pagent.models.verified import FileIdentity, VerifiedChunks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcReport:
    chunks_removed: int
    bytes_freed: int
    files_removed: int


class ChunkStore:
    """Chunks by SHA-256, manifests by id, and assembled model files, under one directory."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        config: ModelsConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.config = config or ModelsConfig()
        self._clock = clock
        self._chunks = self.root / "chunks"
        self._manifest_dir = self.root / "manifests"
        self._files = self.root / "files"
        self._markers = self.root / "unsynced"
        for d in (self._chunks, self._manifest_dir, self._files, self._markers):
            d.mkdir(parents=True, exist_ok=True)
        # No writer can be active yet: anything half-written is from a previous crash.
        stale = remove_stale_temps(self.root)
        if stale:
            log.info("removed %d partial files left by an interrupted write", stale)
        self._lock = threading.RLock()
        self._manifests: dict[str, Manifest] = {}
        self._complete: set[str] = set()
        self._staged: Counter[str] = Counter()
        self._verified_files = VerifiedChunks(self.config.reverify_after_s)
        #: Versions with an ``unsynced/`` marker (a pull not sealed yet).
        self._pulling: set[str] = set()
        #: Of those, versions whose marker a previous process left: their chunks on disk are
        #: hashed before being trusted (removed from the set once done).
        self._suspect: set[str] = set()
        #: Chunk files written without fsync and not synced since.
        self._unsynced: set[str] = set()
        #: Versions whose whole file this process hashed (in a pull, over the verified chunks
        #: it stored) and found equal to the manifest's sha256.
        self._whole_checked: set[str] = set()
        self._load_manifests()
        for marker in self._markers.iterdir():
            if marker.name in self._manifests:
                self._pulling.add(marker.name)
                self._suspect.add(marker.name)
            elif not is_temp(marker.name):
                marker.unlink(missing_ok=True)

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

    def put_chunk(
        self,
        data: bytes | memoryview,
        digest: str | None = None,
        *,
        sync: bool = True,
        direct: bool = False,
    ) -> str:
        """Stores ``data`` under its SHA-256 (computed unless given) and returns the digest.

        A chunk already present is not rewritten. Callers must hold the chunk referenced (a
        stored manifest or a Staging) or the next ``gc`` may remove it. ``sync=False`` skips
        the fsync; only pulls between ``begin_pull`` and ``seal`` and a ``Staging`` (which
        syncs before its manifest is written) may ask for that.
        ``direct`` writes past the page cache (with ``config.direct_writes``): for chunks
        not expected to be read back soon.
        """
        digest = digest or hashlib.sha256(data).hexdigest()
        path = self.chunk_path(digest)
        if path.is_file():
            return digest
        path.parent.mkdir(exist_ok=True)
        fsync = self.config.fsync and sync
        direct = direct and self.config.direct_writes
        atomic_write(path, [data], fsync=fsync, direct=direct)
        with self._lock:
            if self.config.fsync and not sync:
                self._unsynced.add(digest)
            self._verified_files.note(digest, _identity(os.stat(path)), self._clock())
        return digest

    def write_chunk(
        self,
        manifest_id: str,
        index: int,
        data: bytes | memoryview,
        *,
        sync: bool = True,
        direct: bool = False,
    ) -> bool:
        """Stores chunk ``index`` of a stored version if ``data`` verifies; False if corrupt.

        ``sync=False`` (a pull between ``begin_pull`` and ``seal``) leaves the fsync to
        ``sync_chunks`` or ``seal``; ``direct`` as in ``put_chunk``. Raises NotFound when
        the manifest is not stored (store it before pulling chunks).
        """
        m = self.get_manifest(manifest_id)
        if not sync and self.config.fsync:
            with self._lock:
                if manifest_id not in self._pulling:
                    raise FailedPrecondition(
                        f"unsynced write to {manifest_id[:12]} outside a pull (call begin_pull)"
                    )
        if not m.verify_chunk(index, data):
            return False
        self.put_chunk(data, m.chunk_hashes[index], sync=sync, direct=direct)
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
            with self.chunk_path(digest).open("rb", buffering=0) as f:
                identity = _identity(os.fstat(f.fileno()))
                data = f.read()
        except FileNotFoundError:
            raise NotFound(
                f"chunk {index} of model {m.name!r} ({manifest_id[:12]}) is not on this node"
            ) from None
        if not self.config.verify_on_read:
            return data
        now = self._clock()
        with self._lock:
            trusted = self._verified_files.trusted(digest, identity, now)
        if trusted:
            return data
        if len(data) != m.chunk_length(index) or hashlib.sha256(data).hexdigest() != digest:
            self._quarantine(digest)
            raise NotFound(
                f"chunk {index} of model {m.name!r} ({manifest_id[:12]}) was corrupt on disk "
                "and has been removed; fetch it from another holder"
            )
        with self._lock:
            self._verified_files.note(digest, identity, now)
        return data

    def read_chunks(self, manifest_id: str, indices: Iterable[int]) -> list[tuple[int, bytes]]:
        """``read_chunk`` of each index in order, stopping at the first chunk this node lacks
        (the list is then short): one worker-thread hop for several chunks."""
        out: list[tuple[int, bytes]] = []
        for index in indices:
            try:
                out.append((index, self.read_chunk(manifest_id, index)))
            except NotFound:
                break
        return out

    def iter_chunks(self, manifest_id: str, indices: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """``(index, data)`` for each requested index, in order (serves FetchChunks)."""
        for index in indices:
            yield index, self.read_chunk(manifest_id, index)

    def _quarantine(self, digest: str) -> None:
        with self._lock:
            self._verified_files.forget(digest)
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
        """Indices of the version's chunks on disk: where a restarted pull resumes.

        For a version whose pull a previous process left unsealed, the chunks found are first
        hashed (a corrupt one is removed and not counted), and once all are there the version
        is sealed.
        """
        m = self.get_manifest(manifest_id)
        with self._lock:
            if manifest_id in self._complete:
                return set(range(m.chunk_count))
            suspect = manifest_id in self._suspect
        seen: dict[str, bool] = {}
        have = set()
        for i, digest in enumerate(m.chunk_hashes):
            if digest not in seen:
                seen[digest] = self._check_left_over(digest) if suspect else self.has_chunk(digest)
            if seen[digest]:
                have.add(i)
        if suspect:
            with self._lock:
                # Intact, but perhaps only in the page cache (the process was killed, the
                # machine kept running): the seal must sync them too.
                self._unsynced.update(d for d, ok in seen.items() if ok)
                self._suspect.discard(manifest_id)
        if len(have) == m.chunk_count:
            if suspect:
                self.seal(manifest_id)
            with self._lock:
                if manifest_id in self._manifests and manifest_id not in self._pulling:
                    self._complete.add(manifest_id)
        return have

    def _check_left_over(self, digest: str) -> bool:
        """Whether an unsealed pull's chunk file is there and intact (removed when not)."""
        try:
            data = self.chunk_path(digest).read_bytes()
        except FileNotFoundError:
            return False
        if hashlib.sha256(data).hexdigest() == digest:
            return True
        self._quarantine(digest)
        return False

    def missing(self, manifest_id: str) -> list[int]:
        m = self.get_manifest(manifest_id)
        have = self.present(manifest_id)
        return [i for i in range(m.chunk_count) if i not in have]

    def is_complete(self, manifest_id: str) -> bool:
        """Every chunk on disk, verified and durable (no unsealed pull)."""
        m = self.get_manifest(manifest_id)
        complete = len(self.present(manifest_id)) == m.chunk_count
        with self._lock:
            return complete and manifest_id not in self._pulling

    # ---- pulls: deferred fsync -------------------------------------------------------------

    def begin_pull(self, manifest: Manifest) -> None:
        """Registers a version to pull and allows unsynced chunk writes for it until ``seal``.

        The marker is durable before any unsynced chunk is written, so a power cut at any
        point leaves either no such chunk or a marker saying "check them".
        """
        self.put_manifest(manifest)
        mid = manifest.manifest_id
        if not self.config.fsync:
            return  # nothing is ever synced: no marker to keep
        with self._lock:
            if mid in self._pulling or mid in self._complete:
                return
        atomic_write(self._markers / mid, [b""], fsync=True)
        with self._lock:
            self._pulling.add(mid)

    def sync_chunks(self, manifest_id: str, indices: Iterable[int]) -> int:
        """Makes the listed chunks durable (fsync of each file, then of their directories)."""
        m = self.get_manifest(manifest_id)
        return self._sync({m.chunk_hashes[i] for i in indices})

    def _sync(self, digests: set[str]) -> int:
        with self._lock:
            todo = digests & self._unsynced
        dirs: set[Path] = set()
        for digest in sorted(todo):
            path = self.chunk_path(digest)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # removed meanwhile (gc, quarantine): nothing to make durable
            try:
                os.fsync(fd)  # ENOSPC can surface only here (delayed allocation)
            except OSError as e:
                if e.errno in DISK_FULL:
                    raise disk_full_error(path, e) from e
                raise
            finally:
                os.close(fd)
            dirs.add(path.parent)
        for d in sorted(dirs):
            fsync_dir(d)
        if dirs:
            fsync_dir(self._chunks)  # fan-out directories created during the pull
        with self._lock:
            self._unsynced -= todo
        return len(todo)

    def seal(self, manifest_id: str) -> None:
        """Ends a pull's unsynced writes: syncs what is left, then removes the marker."""
        m = self.get_manifest(manifest_id)
        with self._lock:
            if manifest_id not in self._pulling:
                return
            suspect = manifest_id in self._suspect
        if suspect:
            self.present(manifest_id)  # checks (and queues for sync) what a crash left
        self._sync(set(m.chunk_hashes))
        (self._markers / manifest_id).unlink(missing_ok=True)
        fsync_dir(self._markers)
        with self._lock:
            self._pulling.discard(manifest_id)
            self._suspect.discard(manifest_id)

    def open_assembly(self, manifest_id: str) -> tuple[Path, int]:
        """A new temporary file (path, fd) in which a pull writes the version's file in order
        as its chunks arrive, instead of ``assemble`` copying it from the chunk files later.
        A temporary name: invisible to the loader, cleared at the next start after a crash."""
        m = self.get_manifest(manifest_id)
        unique = f"{os.getpid()}.{secrets.token_hex(4)}"
        tmp = self._files / f"{TEMP_PREFIX}{manifest_id}{m.format.suffix}.{unique}"
        return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)

    def adopt_assembly(self, manifest_id: str, tmp: Path, fd: int) -> Path:
        """Makes ``open_assembly``'s file the version's assembled file. The caller wrote every
        chunk in order, each verified against its hash, and hashed them all to the manifest's
        sha256. Syncs and closes ``fd``; removes ``tmp`` if the version went meanwhile."""
        m = self.get_manifest(manifest_id)
        target = self._files / f"{manifest_id}{m.format.suffix}"
        try:
            if self.config.fsync:
                os.fsync(fd)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in DISK_FULL:
                raise disk_full_error(target, e) from e
            raise
        finally:
            os.close(fd)
        with self._lock:
            if manifest_id not in self._manifests:
                tmp.unlink(missing_ok=True)
                raise NotFound(f"model version {manifest_id[:12]} was deleted during its pull")
            os.replace(tmp, target)
            self._whole_checked.add(manifest_id)
        if self.config.fsync:
            fsync_dir(self._files)
        return target

    def note_whole_checked(self, manifest_id: str) -> None:
        """The version's whole file, as this process stored its chunks, matched the manifest's
        sha256 (a pull hashed it in order): ``assemble`` need not hash it again."""
        with self._lock:
            if manifest_id in self._manifests:
                self._whole_checked.add(manifest_id)

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
        with self._lock:
            whole = None if manifest_id in self._whole_checked else hashlib.sha256()
        if whole is None:
            copied = self._assemble_by_copy(m)
            if copied is not None:
                return copied

        def pieces() -> Iterator[bytes]:
            for i in range(m.chunk_count):
                data = self._verified(m, i, trust_recent=True)
                if whole is not None:
                    whole.update(data)
                yield data

        def check_whole() -> None:
            if whole is not None and whole.hexdigest() != m.sha256:
                raise Internal(
                    f"model {m.name!r} ({manifest_id[:12]}): chunks verify but the whole file "
                    "does not match the manifest's sha256; the manifest is inconsistent, "
                    "republish the model"
                )

        atomic_write(target, pieces(), fsync=self.config.fsync, before_commit=check_whole)
        return target

    def _assemble_by_copy(self, m: Manifest) -> Path | None:
        """The model file of a version whose whole hash is checked, copied from its chunk
        files inside the kernel when this process wrote or checked each lately and it is
        unchanged since (``chunk_copy``); None, leaving nothing behind, when one is not."""
        tmp, fd = self.open_assembly(m.manifest_id)
        now = self._clock()

        def trusted(digest: str, st: os.stat_result) -> bool:
            with self._lock:
                return self._verified_files.trusted(digest, _identity(st), now)

        sources = [(self.chunk_path(d), d, m.chunk_length(i)) for i, d in enumerate(m.chunk_hashes)]
        try:
            copied = copy_trusted_chunks(sources, fd, trusted)
        except BaseException as e:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                raise disk_full_error(tmp, e) from e
            raise
        if not copied:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            return None
        return self.adopt_assembly(m.manifest_id, tmp, fd)

    def open_reader(self, manifest_id: str) -> io.BufferedReader:
        """A streaming reader over the version's chunks, verified as it goes (no file copy)."""
        m = self.get_manifest(manifest_id)
        return io.BufferedReader(VerifiedChunkReader(m, self._verified), buffer_size=m.chunk_size)

    def _verified(self, m: Manifest, index: int, trust_recent: bool = False) -> bytes:
        """Chunk ``index``'s bytes once they match its hash; with ``trust_recent``, unhashed
        when this process wrote or checked the unchanged file lately (``VerifiedChunks``)."""
        digest = m.chunk_hashes[index]
        try:
            with self.chunk_path(digest).open("rb", buffering=0) as f:
                identity = _identity(os.fstat(f.fileno()))
                data = f.read()
        except FileNotFoundError:
            raise FailedPrecondition(
                f"chunk {index} of model {m.name!r} ({m.manifest_id[:12]}) is missing; "
                "pull the model again"
            ) from None
        now = self._clock()
        if trust_recent:
            with self._lock:
                if self._verified_files.trusted(digest, identity, now):
                    return data
        if len(data) != m.chunk_length(index) or hashlib.sha256(data).hexdigest() != digest:
            self._quarantine(digest)
            raise FailedPrecondition(
                f"chunk {index} of model {m.name!r} ({m.manifest_id[:12]}) was corrupt on disk "
                "and has been removed; pull the model again"
            )
        with self._lock:
            self._verified_files.note(digest, identity, now)
        return data

    # ---- deletion and garbage collection -------------------------------------------------

    def delete(self, manifest_id: str) -> None:
        """Forgets a version and its assembled file; its chunks go at the next ``gc``."""
        with self._lock:
            if manifest_id not in self._manifests:
                raise NotFound(f"model version {manifest_id[:12]} is not known on this node")
            for path in self._files.glob(f"{manifest_id}.*"):
                _remove(path)
            (self._manifest_dir / f"{manifest_id}.json").unlink(missing_ok=True)
            (self._markers / manifest_id).unlink(missing_ok=True)
            del self._manifests[manifest_id]
            self._complete.discard(manifest_id)
            self._pulling.discard(manifest_id)
            self._suspect.discard(manifest_id)
            self._whole_checked.discard(manifest_id)

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
                _remove(path)
                files += 1
        return GcReport(chunks_removed=chunks, bytes_freed=freed, files_removed=files)


def _remove(path: Path) -> None:
    """An assembled file, or the folder a folder version is unpacked into beside it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _identity(st: os.stat_result) -> FileIdentity:
    return FileIdentity(st.st_ino, st.st_size, st.st_mtime_ns)
