"""Decoder models published through the mesh, for ``Generate``: a model name (and an
optional pinned version) to the folder of that version, unpacked on this node.

The version is the newest one the registry knows, or the pinned one; a node that does not
hold it pulls it first, like any model (``ModelsDriver.pull``: chunks from the holders,
every chunk and the whole pack verified), then unpacks the pack beside it with every file
checked against the manifest's list (``hf.pack.materialise``). Only folder versions whose
task is ``generation`` (a causal LM, accepted by the publish check after it generated a few
tokens) are served; any other model is refused naming what it is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from p2pagent.errors import InvalidArgument
from p2pagent.inference.formats import ModelFormat
from p2pagent.inference.hf import pack
from p2pagent.inference.hf.folder import GENERATION, listed_files
from p2pagent.models.loadable import full_manifest_id, spec_of
from p2pagent.models.manifest import Manifest
from p2pagent.models.registry import Entry


class ModelVersions(Protocol):
    """What of the models driver this needs."""

    def entries(self, name: str = "") -> list[Entry]: ...

    def resolve(self, name: str, manifest_id: str = "") -> Entry: ...

    async def pull(self, entry: Entry, *, pin: bool = True) -> Manifest: ...

    async def assembled(self, m: Manifest) -> Path: ...


@dataclass(frozen=True)
class PublishedDecoder:
    name: str
    manifest_id: str
    folder: Path

    @property
    def key(self) -> str:
        """The name a node runs this version under (one engine per version)."""
        return f"{self.name}@{self.manifest_id}"


class PublishedDecoders:
    def __init__(self, models: ModelVersions) -> None:
        self._models = models

    def entry(self, name: str, version: str = "") -> Entry:
        """The version ``Generate`` would run; NotFound when ``name`` is not published,
        InvalidArgument when it is not a decoder model or the version is malformed."""
        manifest_id = ""
        if version:
            known = [e.manifest_id for e in self._models.entries(name)]
            manifest_id = full_manifest_id(name, version, known)
        entry = self._models.resolve(name, manifest_id)
        m = entry.manifest
        spec = spec_of(m) if m.format is ModelFormat.HF_FOLDER else None
        task = spec.arch_config.get("task") if spec is not None else None
        if task != GENERATION:
            what = f"a {task} folder" if task else f"a {m.format.value} model"
            raise InvalidArgument(
                f"model {name!r} ({m.manifest_id[:12]}) is {what}, not a text-generation "
                "model: Generate runs causal language model folders (GPT-2, Llama...) pushed "
                "with p2pagentctl models push DIR"
            )
        return entry

    async def folder(self, entry: Entry) -> PublishedDecoder:
        """Pulls the version when this node does not hold it, and unpacks its folder."""
        m = await self._models.pull(entry)
        spec = spec_of(m)
        assert spec is not None  # entry() admitted only folder versions with metadata
        packed = await self._models.assembled(m)
        root = await asyncio.to_thread(
            pack.materialise, packed, pack.folder_of(packed), listed_files(spec.arch_config)
        )
        return PublishedDecoder(m.name, m.manifest_id, root)
