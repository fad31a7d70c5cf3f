"""Moving a store from the chunk-file layout (before issue 26) to one file per version.

The old layout kept ``chunks/ab/<sha256>`` (one file per distinct chunk), ``files/`` (model
files assembled from them, whole-file hash checked) and ``unsynced/`` (markers of pulls not
sealed). At the first start of the new code, for each stored manifest:

- an assembled ``files/<id><suffix>`` of the right size becomes the version's complete file
  (a rename: it was checked chunk by chunk and whole when it was made);
- otherwise every chunk file found is hashed, and the ones that match are written into the
  version's partial file and named in its index: the next pull fetches only the rest.

Then the old folders go. A crash half-way leaves the old folders in place and the migration
runs again at the next start (a version already moved is skipped).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from p2pagent.models.manifest import Manifest
from p2pagent.models.version_file import VersionFile

OLD_DIRS = ("chunks", "files", "unsynced")


def migrate_chunk_layout(
    root: Path,
    manifests: Mapping[str, Manifest],
    version_file: Callable[[Manifest], VersionFile],
) -> int:
    """Moves every version found in the old layout under ``root``; returns how many."""
    chunks, files = root / "chunks", root / "files"
    if not chunks.is_dir() and not files.is_dir():
        return 0
    moved = 0
    for m in manifests.values():
        vf = version_file(m)
        if vf.final.is_file() or vf.partial.is_file():
            continue
        assembled = files / vf.final.name
        if assembled.is_file() and assembled.stat().st_size == m.size:
            assembled.rename(vf.final)
            _move_folder(files, vf)
            moved += 1
            continue
        have: set[int] = set()
        for i, digest in enumerate(m.chunk_hashes):
            try:
                data = (chunks / digest[:2] / digest).read_bytes()
            except FileNotFoundError:
                continue
            if len(data) == m.chunk_length(i) and hashlib.sha256(data).hexdigest() == digest:
                if not have:
                    vf.open_partial()
                vf.write(i, data, direct=False)
                have.add(i)
        if have:
            vf.sync()
            vf.close()
            vf.save_index(have, fsync=True)
            moved += 1
    for name in OLD_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    return moved


def _move_folder(files: Path, vf: VersionFile) -> None:
    """The folder a folder version was unpacked into, if any, moves with its file."""
    folder = files / f"{vf.final.name}.d"
    if folder.is_dir():
        folder.rename(vf.final.with_name(folder.name))
