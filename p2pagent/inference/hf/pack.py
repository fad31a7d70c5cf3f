"""A model folder as one file: the *pack* that is chunked, replicated and verified like any
other model version, and materialised back into a directory on the node that loads it.

Layout (little-endian, like safetensors): ``MAGIC`` (8 bytes), the index's length (8 bytes),
the index (canonical JSON: ``{"files": [{"path", "size", "sha256"}, ...]}``, paths sorted),
then each file's bytes in index order. The same file list rides in the manifest's metadata
(``arch_config.files``), so a version's manifest names every file and its SHA-256; a node
checks the pack's index against it at publish and every file against its hash before the
folder is used.

Paths are relative, POSIX, made of plain name characters only, so unpacking cannot write
outside its directory whatever a peer sends. Hidden files and folders (``.git``,
``.gitattributes``, ``.cache``) are not part of a model and are left out; a symbolic link is
refused (it could point anywhere on the publisher's disk).

No torch, no transformers: the CLI and the models layer use this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from p2pagent.errors import InvalidArgument
from p2pagent.models.atomic import TEMP_PREFIX

#: First bytes of every pack.
MAGIC = b"P2PHFPK1"
#: Most files in one folder (the list rides in every manifest).
MAX_FILES = 256
#: Longest relative path of a file in a folder.
MAX_PATH = 200
#: Deepest nesting of a file in a folder (``1_Pooling/config.json`` is 2).
MAX_DEPTH = 4
#: Largest index, bytes.
MAX_INDEX_BYTES = 64 * 1024
#: Name of the marker written once a materialised folder is complete and verified.
COMPLETE_MARKER = ".p2pagent-complete"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PIECE = 1 << 20


@dataclass(frozen=True)
class PackedFile:
    """One file of a folder: its relative path, size and SHA-256."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def check_rel_path(path: str) -> str:
    """Returns ``path`` if it is a safe relative file path inside a folder; InvalidArgument."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise InvalidArgument(f"folder file path {str(path)[:80]!r} is empty or too long")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH or not all(_PART.match(p) and p not in (".", "..") for p in parts):
        raise InvalidArgument(
            f"folder file path {path!r} is not a plain relative path (letters, digits, "
            f"'_', '.', '+', '-'; at most {MAX_DEPTH} levels; no hidden parts)"
        )
    return path


def files_from_doc(doc: Any) -> tuple[PackedFile, ...]:
    """The file list of an index or a manifest's metadata, checked; InvalidArgument."""
    if not isinstance(doc, Sequence) or isinstance(doc, str | bytes) or not doc:
        raise InvalidArgument("a folder's file list must be a non-empty list")
    if len(doc) > MAX_FILES:
        raise InvalidArgument(f"a folder holds {len(doc)} files; at most {MAX_FILES}")
    out: list[PackedFile] = []
    for entry in doc:
        if not isinstance(entry, Mapping) or set(entry) != {"path", "size", "sha256"}:
            raise InvalidArgument("each folder file entry needs exactly path, size and sha256")
        size, digest = entry["size"], entry["sha256"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"folder file {entry['path']!r}: size must be an int >= 0")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise InvalidArgument(f"folder file {entry['path']!r}: sha256 must be 64 hex digits")
        out.append(PackedFile(check_rel_path(entry["path"]), size, digest))
    paths = [f.path for f in out]
    if paths != sorted(set(paths)):
        raise InvalidArgument("a folder's file list must be sorted by path, without repeats")
    return tuple(out)


# ---- the publisher's side ------------------------------------------------------------------


def list_folder(root: Path) -> list[Path]:
    """The files of a model folder that go into its pack, by relative path; InvalidArgument
    for a path that is not a folder, a symbolic link, a bad name or too many files."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a folder")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (base / d).is_symlink():
                raise InvalidArgument(f"{base / d} is a symbolic link: copy what it points to")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = base / name
            if path.is_symlink():
                raise InvalidArgument(f"{path} is a symbolic link: copy what it points to")
            if not path.is_file():
                raise InvalidArgument(f"{path} is not a regular file")
            check_rel_path(path.relative_to(root).as_posix())
            found.append(path.relative_to(root))
            if len(found) > MAX_FILES:
                raise InvalidArgument(f"{root} holds more than {MAX_FILES} files")
    if not found:
        raise InvalidArgument(f"folder {root} holds no files")
    return sorted(found, key=lambda p: p.as_posix())


def describe_folder(root: Path) -> tuple[PackedFile, ...]:
    """Reads every file once: its path, size and SHA-256."""
    out: list[PackedFile] = []
    for rel in list_folder(root):
        digest = hashlib.sha256()
        size = 0
        with (root / rel).open("rb") as f:
            while piece := f.read(_PIECE):
                digest.update(piece)
                size += len(piece)
        out.append(PackedFile(rel.as_posix(), size, digest.hexdigest()))
    return tuple(out)


def index_bytes(files: Sequence[PackedFile]) -> bytes:
    doc = {"files": [f.to_dict() for f in files]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def pack_header(files: Sequence[PackedFile]) -> bytes:
    index = index_bytes(files)
    return MAGIC + struct.pack("<Q", len(index)) + index


def pack_size(files: Sequence[PackedFile]) -> int:
    return len(pack_header(files)) + sum(f.size for f in files)


def pack_pieces(root: Path, files: Sequence[PackedFile]) -> Iterator[bytes]:
    """The pack's bytes in pieces of at most 1 MiB, reading one file at a time. A file that
    changed since ``describe_folder`` changes the pack's hash (the node then refuses it)."""
    yield pack_header(files)
    for f in files:
        with (root / f.path).open("rb") as src:
            left = f.size
            while left > 0:
                piece = src.read(min(_PIECE, left))
                if not piece:
                    raise InvalidArgument(f"{root / f.path} shrank while it was being read")
                left -= len(piece)
                yield piece


# ---- the node's side --------------------------------------------------------------------------


def read_index(stream: BinaryIO) -> tuple[tuple[PackedFile, ...], int]:
    """The pack's file list and the offset of its first file's bytes; InvalidArgument."""
    head = stream.read(16)
    if len(head) < 16 or not head.startswith(MAGIC):
        raise InvalidArgument("the model file is not a model folder pack (no pack header)")
    (length,) = struct.unpack("<Q", head[8:16])
    if length > MAX_INDEX_BYTES:
        raise InvalidArgument(
            f"the folder pack's index is {length} bytes; at most {MAX_INDEX_BYTES}"
        )
    raw = stream.read(length)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"the folder pack's index is not JSON: {e}") from None
    if not isinstance(doc, dict) or set(doc) != {"files"}:
        raise InvalidArgument("the folder pack's index must be an object with 'files' only")
    return files_from_doc(doc["files"]), 16 + length


def materialise(pack: Path, dest: Path, expected: Sequence[PackedFile] | None = None) -> Path:
    """Unpacks ``pack`` into the folder ``dest`` (made atomically: a sibling temporary folder
    renamed into place), checking every file's size and SHA-256 against the index, and the
    index against ``expected`` (the manifest's list) when given. A folder already complete
    is reused. Returns ``dest``."""
    if (dest / COMPLETE_MARKER).is_file():
        return dest
    # Unique per call, not per process: two threads of one node (the inference cache and
    # Generate) may unpack the same pack at once. The prefix keeps it out of the store's gc,
    # and the store's next start removes one a crash left (``atomic.remove_stale_temps``).
    tmp = dest.with_name(f"{TEMP_PREFIX}{dest.name}.{os.getpid()}.{secrets.token_hex(8)}")
    try:
        with pack.open("rb") as src:
            files, offset = read_index(src)
            if expected is not None and tuple(expected) != files:
                raise InvalidArgument(
                    "the folder pack's file list differs from the one its manifest names"
                )
            total = offset + sum(f.size for f in files)
            if os.fstat(src.fileno()).st_size != total:
                raise InvalidArgument("the folder pack's size does not match its index")
            for f in files:
                target = tmp / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with target.open("wb") as out:
                    left = f.size
                    while left > 0:
                        piece = src.read(min(_PIECE, left))
                        if not piece:
                            raise InvalidArgument(f"the folder pack ends inside {f.path!r}")
                        digest.update(piece)
                        out.write(piece)
                        left -= len(piece)
                if digest.hexdigest() != f.sha256:
                    raise InvalidArgument(
                        f"folder file {f.path!r} does not match its SHA-256 in the manifest"
                    )
        (tmp / COMPLETE_MARKER).write_text("")
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / COMPLETE_MARKER).is_file():  # not a concurrent unpack that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def folder_of(pack: Path) -> Path:
    """Where the folder of an assembled pack is materialised: beside it."""
    return pack.with_name(pack.name + ".d")
