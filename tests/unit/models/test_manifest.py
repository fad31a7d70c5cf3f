"""Manifest: chunking, canonical id, round trip and validation of every bad field."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest

from p2pagent.errors import InvalidArgument, UnsupportedVersion
from p2pagent.inference.formats import ModelFormat
from p2pagent.models.manifest import (
    MAX_CHUNKS,
    Manifest,
    build_manifest,
    check_model_name,
    next_version,
    parse_replicas,
    read_chunks,
)

from .conftest import CHUNK, blob

DATA = blob(CHUNK * 3 + 100)


def make(**over: Any) -> Manifest:
    return build_manifest(
        over.pop("name", "resnet"),
        over.pop("format", "torchscript"),
        io.BytesIO(over.pop("data", DATA)),
        version=over.pop("version", 1),
        created_unix=over.pop("created_unix", 1700000000.5),
        chunk_size=over.pop("chunk_size", CHUNK),
        metadata=over.pop("metadata", {"inputs": [{"name": "x", "dtype": "float32"}]}),
        replicas=over.pop("replicas", 2),
        owner=over.pop("owner", ""),
    )


def test_chunks_and_hashes() -> None:
    m = make()
    assert m.chunk_count == 4
    assert m.size == len(DATA)
    assert m.sha256 == hashlib.sha256(DATA).hexdigest()
    assert [m.chunk_length(i) for i in range(4)] == [CHUNK, CHUNK, CHUNK, 100]
    for i in range(4):
        piece = DATA[i * CHUNK : (i + 1) * CHUNK]
        assert m.chunk_hashes[i] == hashlib.sha256(piece).hexdigest()
        assert m.verify_chunk(i, piece)
    assert not m.verify_chunk(0, DATA[1 : CHUNK + 1])
    assert not m.verify_chunk(3, DATA[:100])
    assert not m.verify_chunk(4, b"")


def test_exact_multiple_has_no_empty_tail() -> None:
    m = make(data=blob(CHUNK * 2))
    assert m.chunk_count == 2
    assert m.chunk_length(1) == CHUNK


def test_read_chunks_handles_short_reads() -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            k = min(7, n)
            piece, self.data = self.data[:k], self.data[k:]
            return piece

    pieces = list(read_chunks(Trickle(DATA), CHUNK))  # type: ignore[arg-type]
    assert [len(p) for p in pieces] == [CHUNK, CHUNK, CHUNK, 100]
    assert b"".join(pieces) == DATA


def test_build_from_path_matches_stream(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(DATA)
    from_path = build_manifest(
        "resnet", "torchscript", path, version=1, created_unix=1700000000.5,
        chunk_size=CHUNK, metadata={"inputs": [{"name": "x", "dtype": "float32"}]}, replicas=2,
    )  # fmt: skip
    assert from_path == make()


def test_canonical_id_is_stable_and_content_bound() -> None:
    a, b = make(), make()
    assert a.manifest_id == b.manifest_id == hashlib.sha256(a.encode()).hexdigest()
    assert a == b and hash(a) == hash(b)
    # Key order of the metadata does not matter; its content does.
    c = make(metadata={"b": 1, "a": [1, 2]})
    d = make(metadata={"a": [1, 2], "b": 1})
    assert c.manifest_id == d.manifest_id
    assert make(metadata={"a": 1}).manifest_id != make(metadata={"a": 2}).manifest_id
    assert make(version=2).manifest_id != a.manifest_id
    assert make(replicas="all").manifest_id != a.manifest_id
    assert make(data=DATA[:-1] + b"\x00").manifest_id != a.manifest_id
    # The encoding is the documented canonical JSON.
    assert a.encode().startswith(b'{"chunk_size":4096,"chunks":["')
    assert b" " not in a.encode()


def test_round_trip() -> None:
    m = make(replicas="all", metadata={"outputs": [{"shape": [1, None]}], "u": "é"})
    back = Manifest.decode(m.encode(), expected_id=m.manifest_id)
    assert back == m
    assert back.to_dict() == m.to_dict()
    assert back.replicas == "all"
    assert back.format is ModelFormat.TORCHSCRIPT
    assert back.metadata == {"outputs": [{"shape": [1, None]}], "u": "é"}
    assert back.encode() == m.encode()


def test_decode_rejects_wrong_id_and_garbage() -> None:
    m = make()
    with pytest.raises(InvalidArgument, match="does not match its id"):
        Manifest.decode(m.encode(), expected_id="0" * 64)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        Manifest.decode(b"\xff{")
    with pytest.raises(InvalidArgument, match="JSON object"):
        Manifest.decode(b"[1]")
    doc = m.to_dict()
    doc["schema"] = 99
    with pytest.raises(UnsupportedVersion, match="schema 99"):
        Manifest.from_dict(doc)
    doc = m.to_dict()
    doc["extra"] = 1
    del doc["replicas"]
    with pytest.raises(InvalidArgument, match=r"missing \['replicas'\], unknown \['extra'\]"):
        Manifest.from_dict(doc)


def test_metadata_is_copied() -> None:
    meta: dict[str, Any] = {"inputs": [1]}
    m = make(metadata=meta)
    meta["inputs"].append(2)
    assert m.metadata == {"inputs": [1]}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("a/b", "path separator"),
        ("../etc/passwd", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("bad\x00name", "control"),
        ("bad\nname", "control"),
        ("zero\u200bwidth", "control"),
        (" padded", "whitespace"),
        (".hidden", "start with"),
        ("-flag", "start with"),
        ("x" * 129, "at most 128"),
    ],
)
def test_bad_names(name: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        check_model_name(name)
    with pytest.raises(InvalidArgument, match=problem):
        make(name=name)


@pytest.mark.parametrize("name", ["resnet50", "llama-3.1_8b", "org:model@v2", "模型"])
def test_good_names(name: str) -> None:
    assert make(name=name).name == name


def _doc(**over: Any) -> dict[str, Any]:
    doc = make().to_dict()
    doc.update(over)
    return doc


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"format": "onnx"}, "unknown model format 'onnx'"),
        ({"size": 0}, "positive"),
        ({"size": -5}, "positive"),
        ({"size": CHUNK * 5}, "lists 4 chunk hashes but .* make 5"),
        ({"chunk_size": 100}, "chunk size 100 is out of bounds"),
        ({"chunk_size": 64 * 1024 * 1024}, "out of bounds"),
        ({"chunk_size": 4096.0}, "integer"),
        ({"chunks": ["ab" * 32] * 3}, "lists 3 chunk hashes"),
        ({"chunks": ["zz" * 32] * 4}, "chunk 0 hash"),
        ({"chunks": ["AB" * 32] * 4}, "chunk 0 hash"),
        ({"chunks": "ab"}, "list"),
        ({"sha256": "abc"}, "sha256"),
        ({"version": -1}, "version"),
        ({"version": True}, "version"),
        ({"created_unix": float("nan")}, "finite"),
        ({"created_unix": "yesterday"}, "number"),
        ({"replicas": 0}, "replicas"),
        ({"replicas": "some"}, "replicas"),
        ({"metadata": [1]}, "mapping"),
        ({"metadata": {"x": float("inf")}}, "plain JSON"),
        ({"metadata": {"x": b"raw"}}, "plain JSON"),
        ({"metadata": {"x": "y" * 70000}}, "at most"),
        ({"size": CHUNK * (MAX_CHUNKS + 1), "chunks": []}, "larger chunk size"),
    ],
)
def test_bad_fields(over: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        Manifest.from_dict(_doc(**over))


def test_replicas_wire_form() -> None:
    assert parse_replicas("") == 1
    assert parse_replicas(None) == 1
    assert parse_replicas("3") == 3
    assert parse_replicas(" ALL ") == "all"
    for bad in ("-1", "0", "1.5", "2000", True):
        with pytest.raises(InvalidArgument):
            parse_replicas(bad)  # type: ignore[arg-type]


def test_next_version_is_monotonic() -> None:
    assert next_version(1700000000.25, None) == 1700000000250
    assert next_version(1700000000.25, 1700000000250) == 1700000000251
    assert next_version(1.0, 5000) == 5001  # a clock behind the newest version
    a = make(version=next_version(1.0, None))
    b = make(version=next_version(1.0, a.version))
    assert a.sort_key() < b.sort_key()


def test_chunk_index_out_of_range() -> None:
    with pytest.raises(InvalidArgument, match="chunk index 4 out of range"):
        make().chunk_length(4)


def test_the_owner_is_part_of_the_id_only_when_recorded() -> None:
    plain = make()
    owned = make(owner="spiffe://test/publisher/alice")
    assert "owner" not in plain.to_dict()  # ids of versions made before owners stay valid
    assert owned.to_dict()["owner"] == "spiffe://test/publisher/alice"
    assert owned.manifest_id != plain.manifest_id
    back = Manifest.decode(owned.encode(), expected_id=owned.manifest_id)
    assert back.owner == owned.owner
    assert Manifest.decode(plain.encode(), expected_id=plain.manifest_id).owner == ""
    with pytest.raises(InvalidArgument, match="owner"):
        make(owner="x" * 1000)
