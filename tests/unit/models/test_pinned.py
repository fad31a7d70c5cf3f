"""The door's check of a pinned model version (models/loadable.LoadableModels.pinned): the
registry's entry and serving spec, without pulling; NOT_FOUND / INVALID_ARGUMENT naming what
is wrong for a version that does not exist, a model served from a local file, a version
without metadata."""

from __future__ import annotations

import io

import pytest

from p2pagent.errors import InvalidArgument, NotFound
from p2pagent.models.loadable import LoadableModels
from p2pagent.models.manifest import Manifest, build_manifest
from p2pagent.models.registry import Entry

SPEC = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 2]}],
}


def _version(n: int, metadata: dict[str, object] | None) -> Manifest:
    return build_manifest(
        "m", "torchscript", io.BytesIO(bytes([n]) * 100), version=n, created_unix=float(n),
        chunk_size=4096, metadata=metadata,
    )  # fmt: skip


def _models(entries: list[Entry], local: set[str]) -> LoadableModels:
    def resolve(name: str, manifest_id: str) -> Entry:
        for e in entries:
            if e.manifest_id == manifest_id:
                return e
        raise NotFound(f"model {name!r} has no version {manifest_id[:12]}")

    async def never(*_: object) -> object:
        raise AssertionError("pinned() must not pull or assemble")

    return LoadableModels(
        "n1", None, reserved_names=lambda: local, assemble=never,  # type: ignore[arg-type]
        is_complete=lambda mid: False, versions=lambda name: entries, resolve=resolve,
        pull=never,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_pinned_version_gives_its_spec_by_id_or_prefix() -> None:
    v1, v2 = _version(1, SPEC), _version(2, None)
    models = _models([Entry(v1, frozenset()), Entry(v2, frozenset())], set())
    entry, spec = models.pinned("m", v1.manifest_id)
    assert entry.manifest_id == v1.manifest_id and [p.name for p in spec.inputs] == ["x"]
    assert models.pinned("m", v1.manifest_id[:12])[0].manifest_id == v1.manifest_id


def test_what_cannot_be_pinned_is_refused_naming_it() -> None:
    v1, v2 = _version(1, SPEC), _version(2, None)
    models = _models([Entry(v1, frozenset()), Entry(v2, frozenset())], {"local"})
    with pytest.raises(NotFound, match="has no version"):
        models.pinned("m", "0" * 64)
    with pytest.raises(NotFound, match="has no version"):
        models.pinned("m", "f" * 12 if not v1.manifest_id.startswith("f") else "e" * 12)
    with pytest.raises(InvalidArgument, match="no input/output metadata"):
        models.pinned("m", v2.manifest_id)
    with pytest.raises(InvalidArgument, match="served from a local file"):
        models.pinned("local", v1.manifest_id)
