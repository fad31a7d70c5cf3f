"""The model store on disk: one file per version, with a content-addressed chunk index.

Layout under ``root`` (the node's ``<data>/models``)::

    manifests/<id>.json     canonical manifest of every version this node knows locally
    versions/<id><suffix>   a complete version's file, the one the loader reads
    versions/<id>.partial   a version whose chunks are still arriving, and
    versions/<id>.index     which of its chunks are verified and durable (``version_file``)
    versions/<id><suffix>.d the folder a folder version is unpacked into (``hf.pack``)

Rules that keep it consistent without a journal:

- Nothing counts before it verifies. A chunk is written only after it matched its SHA-256;
  a partial file's index names only chunks written so and made durable before it was
  written; the complete name appears only when every chunk is in. An upload is written to a
  temporary file and renamed to its complete name only after its whole-upload digest matched
  (``staging``). A pull does not hash the whole file again: every chunk was checked against
  the manifest's chunk hashes, and the manifest id covers that list.
- Identical chunks are fetched and written once per node: a content-addressed index
  (digest -> where a verified copy lies) lets a pull take a chunk another stored version
  already holds from the local disk instead of the network (``begin_pull``; the copy is
  hashed before it counts), and a chunk repeated inside a version (zero pages) is written to
  each of its offsets the moment one copy arrives. Each version's file is complete in itself,
  so the loader reads it directly: there is no second, assembled copy.
- A version is registered by writing its manifest. Pulls write it first (then its chunks fill
  in); uploads write it after their file has its complete name, so a cut-off upload registers
  nothing (its temporary file is removed at the next start; a file without a manifest goes
  at the next ``gc``).
- Resume: a restarted pull starts from the chunks the index names (``present``).
- Pulls defer fsync: chunks are written without one and made durable in batches
  (``sync_chunks``: one fsync of the one file, then the index), overlapping the transfer;
  ``seal`` syncs the rest and, when every chunk is in, renames the file to its complete name.
- ``gc`` removes version files no stored manifest names.
- Serving re-hashes a chunk (``verify_on_read``) unless this process wrote or checked it
  lately and the file is unchanged since (``verified.VerifiedChunks``); a chunk found bad is
  dropped from the index (its version becomes partial again) and fetched anew.

All methods do blocking file I/O and are thread-safe: the driver calls them from a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from p2pagent.errors import FailedPrecondition, InvalidArgument, NotFound
from p2pagent.models.atomic import atomic_write, fsync_dir, is_temp, remove_stale_temps
from p2pagent.models.config import ModelsConfig
from p2pagent.models.manifest import Manifest
from p2pagent.models.staging import Staging
from p2pagent.models.store_migrate import migrate_chunk_layout
from p2pagent.models.verified import FileIdentity, VerifiedChunks
from p2pagent.models.version_file import VersionFile

log = logging.getLogger(__name__)

T = TypeVar("T")
#: ``into(index, length)``: an aligned buffer to read chunk ``index`` into (None: the thread's).
ReadInto = Callable[[int, int], memoryview | None]


@dataclass(frozen=True)
class GcReport:
    #: Version files (complete, partial, index, unpacked folder) no manifest names.
    files_removed: int
    bytes_freed: int


class ChunkStore:
    """Manifests by id and one verified file per version, under one directory."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        config: ModelsConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.config = config or ModelsConfig()
        self._clock = clock
        self._manifest_dir = self.root / "manifests"
        self.versions_dir = self.root / "versions"
        for d in (self._manifest_dir, self.versions_dir):
            d.mkdir(parents=True, exist_ok=True)
        # No writer can be active yet: anything half-written is from a previous crash.
        stale = remove_stale_temps(self.root)
        if stale:
            log.info("removed %d partial files left by an interrupted write", stale)
        self._lock = threading.RLock()
        self._manifests: dict[str, Manifest] = {}
        self._files: dict[str, VersionFile] = {}
        #: Chunks verified and written, per version (the durable ones are ``_indexed``).
        self._have: dict[str, set[int]] = {}
        self._indexed: dict[str, set[int]] = {}
        #: Versions whose file has its complete name.
        self._complete: set[str] = set()
        #: The content-addressed chunk index: digest -> a version and index holding it.
        self._where: dict[str, tuple[str, int]] = {}
        #: Per version: chunk positions being written now, and digest -> its positions.
        self._writing: dict[str, set[int]] = {}
        self._by_digest: dict[str, dict[str, list[int]]] = {}
        self._verified = VerifiedChunks(self.config.reverify_after_s)
        #: Called (from the thread that found it) with a version that was complete and no
        #: longer is: a chunk of its file went bad. The driver pulls it again.
        self.on_incomplete: Callable[[str], object] = lambda _mid: None
        self._load_manifests()
        migrated = migrate_chunk_layout(self.root, self._manifests, self._file)
        if migrated:
            log.info("models: moved %d versions from chunk files to version files", migrated)
        for mid in self._manifests:
            self._load_version(mid)

    def _load_manifests(self) -> None:
        for path in sorted(self._manifest_dir.glob("*.json")):
            try:
                m = Manifest.decode(path.read_bytes(), expected_id=path.stem)
            except (OSError, InvalidArgument) as e:
                # Left in place for an operator to inspect; the version is simply not known.
                log.warning("ignoring unreadable manifest %s: %s", path, e)
                continue
            self._manifests[m.manifest_id] = m

    def _file(self, m: Manifest) -> VersionFile:
        vf = self._files.get(m.manifest_id)
        if vf is None:
            vf = self._files[m.manifest_id] = VersionFile(self.versions_dir, m)
        return vf

    def _load_version(self, mid: str) -> None:
        m = self._manifests[mid]
        vf = self._file(m)
        try:
            size = vf.final.stat().st_size
        except FileNotFoundError:
            size = -1
        if size == m.size:
            have = set(range(m.chunk_count))
            self._complete.add(mid)
        else:
            if size >= 0:  # not what its manifest says: left for the operator, not trusted
                log.warning("models: %s is %d bytes, not %d; pulling it again", vf.final, size,
                            m.size)  # fmt: skip
                vf.final.rename(vf.final.with_name(vf.final.name + ".bad"))
            have = vf.load_index()
            if len(have) == m.chunk_count:  # stopped between its last index and the rename
                vf.finish(fsync=self.config.fsync)
                self._complete.add(mid)
        self._have[mid] = have
        self._indexed[mid] = set(have)
        for i in have:
            self._where.setdefault(m.chunk_hashes[i], (mid, i))

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
            self._file(manifest)
            self._have.setdefault(mid, set())
            self._indexed.setdefault(mid, set())

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
        """Indices of the version's chunks verified and written here: where a pull resumes."""
        self.get_manifest(manifest_id)
        with self._lock:
            return set(self._have.get(manifest_id, ()))

    def missing(self, manifest_id: str) -> list[int]:
        m = self.get_manifest(manifest_id)
        have = self.present(manifest_id)
        return [i for i in range(m.chunk_count) if i not in have]

    def is_complete(self, manifest_id: str) -> bool:
        """Every chunk verified, durable, and the file under its complete name."""
        self.get_manifest(manifest_id)
        with self._lock:
            return manifest_id in self._complete

    def holds_complete(self, manifest_id: str) -> bool:
        """``is_complete``, False for a version not stored at all."""
        with self._lock:
            return manifest_id in self._complete

    # ---- pulls -----------------------------------------------------------------------------

    def begin_pull(self, manifest: Manifest) -> None:
        """Registers a version to pull, opens its partial file, and fills in every chunk
        another stored version already holds (read from there and hashed: no network)."""
        self.put_manifest(manifest)
        mid = manifest.manifest_id
        with self._lock:
            if mid in self._complete:
                return
            self._files[mid].open_partial()
            have = set(self._have[mid])
            wanted: dict[str, tuple[int, tuple[str, int]]] = {}
            for i, digest in enumerate(manifest.chunk_hashes):
                where = self._where.get(digest)
                if i not in have and digest not in wanted and where and where[0] != mid:
                    wanted[digest] = (i, where)
        copied = 0
        for index, (other, at) in wanted.values():
            try:
                data = self._read_verified(other, at, bytes, trust_recent=True)
            except (NotFound, FailedPrecondition):
                continue  # gone or bad there: fetched like any other chunk
            if self.write_chunk(mid, index, data, sync=False):
                copied += 1
        if copied:
            self.sync_chunks(mid, ())
            log.info("models: %d chunks of %s (%s) taken from versions on disk",
                     copied, manifest.name, mid[:12])  # fmt: skip

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

        It is written at its offset and at every other offset of the version with the same
        digest. ``sync=False`` (a pull) leaves making it durable, and so naming it in the
        index, to ``sync_chunks`` or ``seal``; ``direct`` writes past the page cache (with
        ``config.direct_writes``), for chunks not expected to be read back soon. Raises
        NotFound when the manifest is not stored (store it before pulling chunks), or was
        deleted meanwhile.
        """
        m = self.get_manifest(manifest_id)
        if not m.verify_chunk(index, data):
            return False
        digest = m.chunk_hashes[index]
        with self._lock:
            self._check_known(m)
            if manifest_id in self._complete:
                return True
            have = self._have[manifest_id]
            writing = self._writing.setdefault(manifest_id, set())
            # Reserved, so that a second copy of the chunk (an endgame duplicate) arriving
            # meanwhile writes nothing, and no write is left running once all are in.
            positions = [
                i for i in self._positions(m, digest) if i not in have and i not in writing
            ]
            writing.update(positions)
            vf = self._files[manifest_id]
            vf.open_partial()
            vf.writers += 1
        written = False
        try:
            direct = direct and self.config.direct_writes
            for i in positions:
                vf.write(i, data, direct=direct)
            written = True
        finally:
            with self._lock:
                # Held and released in one step: no second writer can slip in between.
                writing.difference_update(positions)
                vf.end_write()
                if written and manifest_id in self._manifests:
                    have.update(positions)
                    self._where.setdefault(digest, (manifest_id, index))
        with self._lock:
            self._check_known(m)
        if sync:
            self.sync_chunks(manifest_id, ())
        return True

    def _positions(self, m: Manifest, digest: str) -> list[int]:
        """Every index of ``m`` whose chunk has ``digest`` (usually one)."""
        with self._lock:
            by_digest = self._by_digest.get(m.manifest_id)
            if by_digest is None:
                by_digest = self._by_digest[m.manifest_id] = {}
                for i, d in enumerate(m.chunk_hashes):
                    by_digest.setdefault(d, []).append(i)
            return by_digest.get(digest, [])

    def _check_known(self, m: Manifest) -> None:
        if m.manifest_id not in self._manifests:
            raise NotFound(f"model version {m.manifest_id[:12]} was deleted during its pull")

    def sync_chunks(self, manifest_id: str, indices: Iterable[int] = ()) -> int:
        """Makes every chunk written so far durable (one fsync of the version's file), then
        names them in its index, or, when every chunk is in, gives the file its complete
        name; returns how many chunks became durable. (``indices``, what the caller wrote
        since its last call, is only a hint: everything written is synced.)"""
        m = self.get_manifest(manifest_id)
        with self._lock:
            if manifest_id in self._complete:
                return 0
            written = set(self._have[manifest_id])
            vf = self._files[manifest_id]
            if written == self._indexed[manifest_id]:
                return 0
        if self.config.fsync:
            vf.sync()
        with self._lock:
            self._check_known(m)
            indexed = self._indexed[manifest_id]
            if manifest_id in self._complete or written <= indexed:
                return 0  # a concurrent call got further
            added = len(written - indexed)
            if len(written) == m.chunk_count:
                vf.finish(fsync=self.config.fsync)
                self._complete.add(manifest_id)
                self._note_all(m, vf)
            else:
                vf.save_index(written, fsync=self.config.fsync)
            self._indexed[manifest_id] = written
        return added

    def seal(self, manifest_id: str) -> None:
        """Ends a pull's unsynced writes: syncs what is left (the version is then complete
        if every chunk is in)."""
        self.sync_chunks(manifest_id)

    def _note_all(self, m: Manifest, vf: VersionFile) -> None:
        """Every chunk of a file this process just wrote (each verified first) is trusted
        until the file changes or ``reverify_after_s`` passes."""
        identity = _identity(vf.final.stat())
        now = self._clock()
        for i in range(m.chunk_count):
            self._verified.note(f"{m.manifest_id}/{i}", identity, now)

    # ---- uploads ---------------------------------------------------------------------------

    def staging(self) -> Staging:
        """A temporary file for an upload, registered as a version only at ``commit``."""
        return Staging(self)

    def _adopt_upload(self, manifest: Manifest, tmp: Path) -> None:
        """Called by ``Staging.commit``: ``tmp`` holds every byte of ``manifest``'s file,
        durable and matching the upload's digest; it becomes the version's complete file,
        then the manifest registers it."""
        mid = manifest.manifest_id
        with self._lock:
            if mid in self._complete:
                tmp.unlink(missing_ok=True)
                return
            vf = VersionFile(self.versions_dir, manifest)
            os.replace(tmp, vf.final)
            try:
                if self.config.fsync:
                    fsync_dir(self.versions_dir)
                self.put_manifest(manifest)
            except BaseException:
                vf.final.unlink(missing_ok=True)  # no manifest names it: not published
                raise
            self._files[mid] = vf
            self._have[mid] = set(range(manifest.chunk_count))
            self._indexed[mid] = set(self._have[mid])
            self._complete.add(mid)
            for i, digest in enumerate(manifest.chunk_hashes):
                self._where.setdefault(digest, (mid, i))
            self._note_all(manifest, vf)

    # ---- reading -----------------------------------------------------------------------------

    def read_chunk(self, manifest_id: str, index: int) -> bytes:
        """Chunk ``index`` of a stored version, for serving to a peer.

        NotFound when this node does not hold it. With ``verify_on_read`` a chunk that no
        longer matches its hash (bit rot) is dropped from the index and reported as
        NotFound, so the peer fetches it elsewhere and we do not get banned for serving bad
        data.
        """
        return self.read_chunk_as(manifest_id, index, lambda _i, view: bytes(view))

    def read_chunk_as(
        self,
        manifest_id: str,
        index: int,
        use: Callable[[int, memoryview], T],
        into: ReadInto | None = None,
    ) -> T:
        """``read_chunk``, handing ``use(index, view of the bytes)`` the chunk where it was
        read (the view is valid only during the call): a server encodes its answer from
        there, with no copy of the chunk on the way. ``into(index, length)``: an aligned
        buffer to read the chunk into (``chunk_wire.ChunkAnswers``: inside the answer)."""
        try:
            return self._read_verified(
                manifest_id,
                index,
                lambda view: use(index, view),
                trust_recent=True,
                check=self.config.verify_on_read,
                into=None if into is None else lambda length: into(index, length),
            )
        except FailedPrecondition as e:
            raise NotFound(str(e).replace("pull the model again", "fetch it elsewhere")) from None

    def read_chunks(self, manifest_id: str, indices: Iterable[int]) -> list[tuple[int, bytes]]:
        """``read_chunk`` of each index in order, stopping at the first chunk this node lacks
        (the list is then short): one worker-thread hop for several chunks."""
        return self.read_chunks_as(manifest_id, indices, lambda _i, view: bytes(view))

    def read_chunks_as(
        self,
        manifest_id: str,
        indices: Iterable[int],
        use: Callable[[int, memoryview], T],
        into: ReadInto | None = None,
    ) -> list[tuple[int, T]]:
        """``read_chunks`` through ``read_chunk_as``."""
        out: list[tuple[int, T]] = []
        for index in indices:
            try:
                out.append((index, self.read_chunk_as(manifest_id, index, use, into)))
            except NotFound:
                break
        return out

    def iter_chunks(self, manifest_id: str, indices: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """``(index, data)`` for each requested index, in order."""
        for index in indices:
            yield index, self.read_chunk(manifest_id, index)

    def _read_verified(
        self,
        manifest_id: str,
        index: int,
        use: Callable[[memoryview], T],
        *,
        trust_recent: bool = False,
        check: bool = True,
        into: Callable[[int], memoryview | None] | None = None,
    ) -> T:
        """``use(chunk index's bytes)`` once they match its hash; with ``trust_recent``,
        unhashed when this process wrote or checked it lately in an unchanged file.
        FailedPrecondition when it is not here, or was corrupt on disk (it is then dropped)."""
        m = self.get_manifest(manifest_id)
        m.chunk_length(index)  # raises InvalidArgument when out of range
        with self._lock:
            held = index in self._have.get(manifest_id, ())
            vf = self._files.get(manifest_id)
        if not held or vf is None:
            raise FailedPrecondition(
                f"chunk {index} of model {m.name!r} ({manifest_id[:12]}) is not on this node"
            )

        def checked(view: memoryview, st: os.stat_result) -> T:
            if not check:
                return use(view)
            key, identity, now = f"{manifest_id}/{index}", _identity(st), self._clock()
            if trust_recent:
                with self._lock:
                    if self._verified.trusted(key, identity, now):
                        return use(view)
            if not m.verify_chunk(index, view):
                raise _CorruptOnDisk
            with self._lock:
                self._verified.note(key, identity, now)
            return use(view)

        try:
            return vf.read_as(index, checked, into)
        except FileNotFoundError:
            self._drop_chunks(m, {index})
            raise FailedPrecondition(
                f"the file of model {m.name!r} ({manifest_id[:12]}) is missing; "
                "pull the model again"
            ) from None
        except _CorruptOnDisk:
            self._drop_chunks(m, set(self._positions(m, m.chunk_hashes[index])))
            raise FailedPrecondition(
                f"chunk {index} of model {m.name!r} ({manifest_id[:12]}) was corrupt on disk "
                "and has been dropped; pull the model again"
            ) from None

    def _drop_chunks(self, m: Manifest, indices: set[int]) -> None:
        """Chunks found bad or gone on disk stop counting: the version is partial again and
        its index no longer names them, so the next pull fetches them."""
        mid = m.manifest_id
        was_complete = False
        with self._lock:
            if mid not in self._manifests:
                return
            vf = self._files[mid]
            have = self._have[mid] - indices
            if mid in self._complete:
                was_complete = True
                self._complete.discard(mid)
                if vf.final.is_file():
                    vf.reopen(fsync=self.config.fsync)
            self._have[mid] = have
            self._indexed[mid] = self._indexed[mid] & have
            if vf.partial.is_file():
                vf.save_index(self._indexed[mid], fsync=self.config.fsync)
            for i in indices:
                self._verified.forget(f"{mid}/{i}")
                if self._where.get(m.chunk_hashes[i]) == (mid, i):
                    del self._where[m.chunk_hashes[i]]
        log.warning("models: dropped %d bad chunks of %s (%s)", len(indices), m.name, mid[:12])
        if was_complete:
            self.on_incomplete(mid)

    # ---- the model file ------------------------------------------------------------------

    def assemble(self, manifest_id: str) -> Path:
        """The version's file for the loader: complete, every chunk verified (it is the file
        the pull or the upload wrote). FailedPrecondition while chunks are missing."""
        m = self.get_manifest(manifest_id)
        with self._lock:
            if manifest_id in self._complete:
                return self._files[manifest_id].final
            missing = m.chunk_count - len(self._have[manifest_id])
        raise FailedPrecondition(
            f"model {m.name!r} ({manifest_id[:12]}) is incomplete here: {missing} of "
            f"{m.chunk_count} chunks missing; pull it first"
        )

    # ---- deletion and garbage collection -------------------------------------------------

    def delete(self, manifest_id: str) -> None:
        """Forgets a version and removes its file (and the folder unpacked beside it)."""
        with self._lock:
            if manifest_id not in self._manifests:
                raise NotFound(f"model version {manifest_id[:12]} is not known on this node")
            m = self._manifests.pop(manifest_id)
            vf = self._files.pop(manifest_id)
            vf.remove()
            _remove(vf.final.with_name(vf.final.name + ".d"))
            (self._manifest_dir / f"{manifest_id}.json").unlink(missing_ok=True)
            self._complete.discard(manifest_id)
            for per_version in (self._have, self._indexed, self._writing, self._by_digest):
                per_version.pop(manifest_id, None)
            for i, digest in enumerate(m.chunk_hashes):
                self._verified.forget(f"{manifest_id}/{i}")
                if self._where.get(digest, ("",))[0] == manifest_id:
                    del self._where[digest]
            self._reindex(m.chunk_hashes)

    def _reindex(self, digests: Iterable[str]) -> None:
        """Points the chunk index at another holder of digests whose entry went."""
        lost = {d for d in digests if d not in self._where}
        if not lost:
            return
        for mid, have in self._have.items():
            m = self._manifests[mid]
            for i in have:
                if m.chunk_hashes[i] in lost:
                    self._where.setdefault(m.chunk_hashes[i], (mid, i))

    def gc(self) -> GcReport:
        """Removes version files (and unpacked folders) no stored manifest names."""
        files = freed = 0
        with self._lock:
            for path in self.versions_dir.iterdir():
                if is_temp(path.name) or path.name.split(".", 1)[0] in self._manifests:
                    continue
                try:
                    freed += path.stat().st_size if path.is_file() else 0
                except FileNotFoundError:
                    continue
                _remove(path)
                files += 1
        return GcReport(files_removed=files, bytes_freed=freed)


def _remove(path: Path) -> None:
    """A version file, or the folder a folder version is unpacked into beside it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class _CorruptOnDisk(Exception):
    """A chunk read for serving no longer matches its hash (``_read_verified``)."""


def _identity(st: os.stat_result) -> FileIdentity:
    return FileIdentity(st.st_ino, st.st_size, st.st_mtime_ns)
