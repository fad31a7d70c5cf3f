"""What a model version is: the manifest, its canonical encoding and its id.

A manifest names a model version and pins its content: the SHA-256 of the whole file and of
every fixed-size chunk. Its id is the hex SHA-256 of its canonical encoding (sorted-key,
whitespace-free, ASCII JSON), so two nodes that build the same manifest agree on its id
without talking, and a manifest fetched from anyone can be checked against the id it was
asked for.

Versions: ``version`` is an integer that only grows per model name. A leaderless cluster
cannot hand out counters, so it is the publish time in milliseconds, bumped past the newest
version the publisher knows (``next_version``). Two concurrent publishes of one name both
survive as distinct versions; ``(version, manifest_id)`` orders them the same way everywhere.

Validation raises InvalidArgument naming the broken field, whether the manifest came from a
user's upload or from a peer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Literal

from p2pagent.errors import InvalidArgument, UnsupportedVersion
from p2pagent.inference.formats import ModelFormat
from p2pagent.models.config import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

#: Version of the manifest encoding; a node refuses manifests of a schema it cannot read.
SCHEMA = 1
#: Model names are at most this long (they show up in tables, logs and metric labels).
MAX_NAME_LENGTH = 128
#: Most chunks in one model: 256 GiB at the default chunk size. Bounds the manifest (~17 MB
#: of hashes) that every node keeps and gossips.
MAX_CHUNKS = 1 << 18
#: Largest canonical metadata, bytes: it is small (inputs/outputs), and rides in every manifest.
MAX_METADATA_BYTES = 64 * 1024
#: Longest owner (a SPIFFE URI: cluster, role and name of at most 63 characters each).
MAX_OWNER_LENGTH = 256
#: Most replicas one may ask for explicitly; "all" covers larger clusters.
MAX_REPLICAS = 1024

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Replicas = int | Literal["all"]
ALL: Literal["all"] = "all"


# ---- field checks (each raises InvalidArgument naming the problem) ------------------------------


def check_model_name(name: str) -> str:
    """Returns ``name`` if usable as a model name, else raises InvalidArgument saying why.

    Names never become paths in our store (that is keyed by hashes), but they do reach file
    names on users' machines, logs and terminals, so separators, ``..`` and control characters
    are refused outright.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument("model name is empty: give the model a name, e.g. 'resnet50'")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"model name is {len(name)} characters; at most {MAX_NAME_LENGTH}")
    if "/" in name or "\\" in name:
        raise InvalidArgument(f"model name {name!r} contains a path separator ('/' or '\\')")
    if ".." in name:
        raise InvalidArgument(f"model name {name!r} contains '..'")
    if any(unicodedata.category(c)[0] == "C" for c in name):
        raise InvalidArgument(f"model name {name!r} contains control or invisible characters")
    if name != name.strip():
        raise InvalidArgument(f"model name {name!r} starts or ends with whitespace")
    if name.startswith((".", "-")):
        raise InvalidArgument(f"model name {name!r} must not start with '.' or '-'")
    return name


def check_sha256(digest: str) -> str:
    """Returns ``digest`` if it is a hex SHA-256 (64 hex digits; case ignored), lowercased."""
    text = digest.lower() if isinstance(digest, str) else ""
    if not _HEX64.match(text):
        raise InvalidArgument(
            f"sha256 {str(digest)[:80]!r} is not a SHA-256 digest: give 64 hex digits"
        )
    return text


def check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise InvalidArgument(f"chunk size must be an integer, got {chunk_size!r}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgument(
            f"chunk size {chunk_size} is out of bounds: use {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} "
            "bytes (0 on the wire means the node default)"
        )
    return chunk_size


def check_size(size: int, chunk_size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidArgument(f"model size must be a positive number of bytes, got {size!r}")
    if chunk_count(size, chunk_size) > MAX_CHUNKS:
        raise InvalidArgument(
            f"model of {size} bytes would need {chunk_count(size, chunk_size)} chunks of "
            f"{chunk_size} bytes; at most {MAX_CHUNKS}: use a larger chunk size"
        )
    return size


def parse_replicas(value: str | int | None) -> Replicas:
    """Reads the wire form: ``""``/None -> 1, ``"all"``, or a positive count."""
    if value is None or value == "":
        return 1
    if isinstance(value, str):
        text = value.strip().lower()
        if text == ALL:
            return ALL
        if not text.isdigit():
            raise InvalidArgument(f"replicas must be a positive count or 'all', got {value!r}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas must be 1..{MAX_REPLICAS} or 'all', got {value!r}")
    return value


def canonical_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A private, JSON-clean copy of ``metadata`` (opaque to this module), size-checked."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"model metadata must be a mapping, got {type(metadata).__name__}")
    try:
        text = _canonical_json(dict(metadata))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"model metadata is not plain JSON: {e}") from None
    if len(text) > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"model metadata is {len(text)} bytes encoded; at most {MAX_METADATA_BYTES}"
        )
    copy: dict[str, Any] = json.loads(text)
    return copy


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def next_version(now: float, latest: int | None) -> int:
    """The version a publish at ``now`` gets: publish time in ms, past the newest one known."""
    stamp = int(now * 1000)
    return stamp if latest is None else max(stamp, latest + 1)


def _canonical_json(doc: Any) -> bytes:
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


# ---- the manifest ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Manifest:
    """One immutable model version. Equality and hashing go by ``manifest_id``.

    ``metadata`` is a private copy (taken at construction); treat it as read-only.
    """

    name: str
    version: int
    format: ModelFormat
    size: int
    sha256: str
    chunk_size: int
    chunk_hashes: tuple[str, ...]
    created_unix: float
    metadata: Mapping[str, Any]
    replicas: Replicas = 1
    #: SPIFFE URI of the identity that published it (may delete it); "" for a version made
    #: outside an upload (only an admin may delete those).
    owner: str = ""

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise InvalidArgument(f"model version must be an integer >= 0, got {self.version!r}")
        object.__setattr__(self, "format", ModelFormat.parse(self.format))
        check_chunk_size(self.chunk_size)
        check_size(self.size, self.chunk_size)
        if not isinstance(self.sha256, str) or not _HEX64.match(self.sha256):
            raise InvalidArgument("model sha256 must be 64 lowercase hex digits")
        hashes = tuple(self.chunk_hashes)
        expected = chunk_count(self.size, self.chunk_size)
        if len(hashes) != expected:
            raise InvalidArgument(
                f"manifest lists {len(hashes)} chunk hashes but {self.size} bytes in chunks of "
                f"{self.chunk_size} make {expected}"
            )
        for i, h in enumerate(hashes):
            if not isinstance(h, str) or not _HEX64.match(h):
                raise InvalidArgument(f"chunk {i} hash must be 64 lowercase hex digits")
        object.__setattr__(self, "chunk_hashes", hashes)
        created = self.created_unix
        if isinstance(created, bool) or not isinstance(created, int | float):
            raise InvalidArgument(f"created time must be a number, got {created!r}")
        if not math.isfinite(created) or created < 0:
            raise InvalidArgument(f"created time must be finite and >= 0, got {created!r}")
        object.__setattr__(self, "created_unix", float(created))
        object.__setattr__(self, "metadata", canonical_metadata(self.metadata))
        object.__setattr__(self, "replicas", parse_replicas(self.replicas))
        if not isinstance(self.owner, str) or len(self.owner) > MAX_OWNER_LENGTH:
            raise InvalidArgument(f"manifest owner must be a string of at most {MAX_OWNER_LENGTH}")

    # ---- identity ------------------------------------------------------------------------

    @cached_property
    def canonical(self) -> bytes:
        """The canonical encoding; its SHA-256 is the manifest id."""
        return _canonical_json(self.to_dict())

    @cached_property
    def manifest_id(self) -> str:
        return hashlib.sha256(self.canonical).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.manifest_id == other.manifest_id

    def __hash__(self) -> int:
        return hash(self.manifest_id)

    def sort_key(self) -> tuple[int, str]:
        """Newest-last order of versions of one name, the same on every node."""
        return (self.version, self.manifest_id)

    # ---- chunk geometry ------------------------------------------------------------------

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_hashes)

    def chunk_offset(self, index: int) -> int:
        self._check_index(index)
        return index * self.chunk_size

    def chunk_length(self, index: int) -> int:
        """Bytes in chunk ``index``: ``chunk_size`` except, usually, the last."""
        self._check_index(index)
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.chunk_hashes):
            raise InvalidArgument(
                f"chunk index {index} out of range: model {self.name!r} has "
                f"{len(self.chunk_hashes)} chunks"
            )

    def verify_chunk(self, index: int, data: bytes | memoryview) -> bool:
        """Whether ``data`` is chunk ``index`` (length and hash). Out-of-range is False."""
        if not 0 <= index < len(self.chunk_hashes) or len(data) != self.chunk_length(index):
            return False
        return hashlib.sha256(data).hexdigest() == self.chunk_hashes[index]

    # ---- encoding ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "name": self.name,
            "version": self.version,
            "format": self.format.value,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunk_hashes),
            "created_unix": self.created_unix,
            "metadata": self.metadata,
            "replicas": self.replicas,
        }
        # Only when known: a manifest without an owner keeps the id it had before owners
        # were recorded.
        if self.owner:
            doc["owner"] = self.owner
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Manifest:
        if not isinstance(doc, Mapping):
            raise InvalidArgument("manifest must be a JSON object")
        schema = doc.get("schema")
        if schema != SCHEMA:
            raise UnsupportedVersion(
                f"manifest schema {schema!r} is not supported (this node reads {SCHEMA}): "
                "upgrade this node"
            )
        keys = set(doc) - {"schema", "owner"}
        fields = {
            "name", "version", "format", "size", "sha256", "chunk_size", "chunks",
            "created_unix", "metadata", "replicas",
        }  # fmt: skip
        if keys != fields:
            missing, extra = sorted(fields - keys), sorted(keys - fields)
            raise InvalidArgument(f"manifest fields wrong: missing {missing}, unknown {extra}")
        chunks = doc["chunks"]
        if not isinstance(chunks, list):
            raise InvalidArgument("manifest 'chunks' must be a list of hex SHA-256 digests")
        return cls(
            name=doc["name"],
            version=doc["version"],
            format=ModelFormat.parse(doc["format"]),
            size=doc["size"],
            sha256=doc["sha256"],
            chunk_size=doc["chunk_size"],
            chunk_hashes=tuple(chunks),
            created_unix=doc["created_unix"],
            metadata=doc["metadata"],
            replicas=doc["replicas"],
            owner=doc.get("owner", ""),
        )

    def encode(self) -> bytes:
        return self.canonical

    @classmethod
    def decode(cls, data: bytes, expected_id: str | None = None) -> Manifest:
        """Parses and validates an encoded manifest; checks its id when one is expected."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise InvalidArgument(f"manifest is not valid JSON: {e}") from None
        manifest = cls.from_dict(doc)
        if expected_id is not None and manifest.manifest_id != expected_id:
            raise InvalidArgument(
                f"manifest content does not match its id {expected_id} "
                f"(it hashes to {manifest.manifest_id})"
            )
        return manifest


# ---- building from a file ----------------------------------------------------------------------


def read_chunks(stream: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    """Yields ``chunk_size`` pieces of ``stream`` (the last may be shorter), one at a time."""
    while True:
        buf = bytearray()
        while len(buf) < chunk_size:
            piece = stream.read(chunk_size - len(buf))
            if not piece:
                break
            buf += piece
        if not buf:
            return
        yield bytes(buf)
        if len(buf) < chunk_size:
            return


def build_manifest(
    name: str,
    format: str | ModelFormat,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    version: int,
    created_unix: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metadata: Mapping[str, Any] | None = None,
    replicas: str | int | None = 1,
    owner: str = "",
) -> Manifest:
    """Builds the manifest of a file or binary stream, reading it one chunk at a time."""
    check_model_name(name)
    fmt = ModelFormat.parse(format)
    check_chunk_size(chunk_size)
    if isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as f:
            return build_manifest(
                name, fmt, f, version=version, created_unix=created_unix,
                chunk_size=chunk_size, metadata=metadata, replicas=replicas, owner=owner,
            )  # fmt: skip
    whole = hashlib.sha256()
    hashes: list[str] = []
    size = 0
    for piece in read_chunks(source, chunk_size):
        whole.update(piece)
        hashes.append(hashlib.sha256(piece).hexdigest())
        size += len(piece)
        if len(hashes) > MAX_CHUNKS:
            check_size(size + 1, chunk_size)  # raises with the limit explained
    return Manifest(
        name=name,
        version=version,
        format=fmt,
        size=size,
        sha256=whole.hexdigest(),
        chunk_size=chunk_size,
        chunk_hashes=tuple(hashes),
        created_unix=created_unix,
        metadata=metadata or {},
        replicas=parse_replicas(replicas),
        owner=owner,
    )
