"""The generation service's published models, over a fake registry holding real manifests
and a real pack: a name resolves to its newest version (or a pinned prefix), is pulled, its
folder unpacked and run; a non-decoder version, a pin on a local folder and an unknown name
are refused naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pagent.errors import InvalidArgument, NotFound
from p2pagent.inference.generation.config import GenerationConfig
from p2pagent.inference.generation.engine import FinishEvent, TokenEvent
from p2pagent.inference.generation.published import PublishedDecoders
from p2pagent.inference.generation.sampling import SamplingParams
from p2pagent.inference.generation.service import GenerationService, Prompt
from p2pagent.inference.hf import pack
from p2pagent.inference.hf.folder import folder_metadata
from p2pagent.models.manifest import Manifest, build_manifest
from p2pagent.models.registry import Entry
from p2pagent.testing.decoder_folders import build_gpt2_folder

CHUNK = 1 << 20


class FakeVersions:
    """The models driver as Generate sees it: versions in memory, packs on disk."""

    def __init__(self) -> None:
        self.versions: list[tuple[Entry, Path]] = []
        self.pulled: list[str] = []

    def add(self, name: str, packed: Path, meta: dict[str, object], version: int) -> Manifest:
        m = build_manifest(
            name, "hf_folder", packed, version=version, created_unix=float(version),
            chunk_size=CHUNK, metadata=meta,
        )  # fmt: skip
        self.versions.append((Entry(m, frozenset({"n1"})), packed))
        return m

    def entries(self, name: str = "") -> list[Entry]:
        return [e for e, _ in self.versions if e.manifest.name == name]

    def resolve(self, name: str, manifest_id: str = "") -> Entry:
        found = [e for e in self.entries(name) if manifest_id in ("", e.manifest_id)]
        if not found:
            raise NotFound(f"model {name!r} is not published" if not manifest_id else "no version")
        return found[-1]

    async def pull(self, entry: Entry, *, pin: bool = True) -> Manifest:
        self.pulled.append(entry.manifest_id)
        return entry.manifest

    async def assembled(self, m: Manifest) -> Path:
        return next(p for e, p in self.versions if e.manifest_id == m.manifest_id)


def _pack(root: Path, dest: Path) -> tuple[Path, dict[str, object]]:
    files = pack.describe_folder(root)
    with dest.open("wb") as out:
        for piece in pack.pack_pieces(root, files):
            out.write(piece)
    return dest, folder_metadata(root, files)


async def _ids(service: GenerationService, model: str, version: str = "") -> list[int]:
    events = await service.generate(
        model, Prompt(ids=(5, 6, 7)), SamplingParams(max_new_tokens=4), version
    )
    out = [e.token_id async for e in events if isinstance(e, TokenEvent)]
    return out


async def test_a_published_decoder_resolves_pulls_and_runs(tmp_path: Path) -> None:
    fake = FakeVersions()
    old = fake.add("lm", *_pack(build_gpt2_folder(tmp_path / "a", seed=1), tmp_path / "a.pk"), 1)
    new = fake.add("lm", *_pack(build_gpt2_folder(tmp_path / "b", seed=2), tmp_path / "b.pk"), 2)
    local = build_gpt2_folder(tmp_path / "local", seed=1)
    service = GenerationService({"here": local}, GenerationConfig(), "cpu", PublishedDecoders(fake))
    try:
        newest = await _ids(service, "lm")
        assert fake.pulled == [new.manifest_id]
        pinned = await _ids(service, "lm", old.manifest_id[:12])
        assert fake.pulled[-1] == old.manifest_id
        assert len(newest) == len(pinned) == 4
        assert pinned == await _ids(service, "here")  # same seed, same folder bytes
        assert pinned != newest  # other weights
        assert (pack.folder_of(tmp_path / "b.pk") / "config.json").is_file()  # unpacked

        with pytest.raises(InvalidArgument, match="local folder"):
            await _ids(service, "here", old.manifest_id[:12])
        with pytest.raises(NotFound, match=r"'nope' is not published.*folders here: here"):
            await _ids(service, "nope")
        meta = json.loads(json.dumps(new.metadata))
        meta["arch_config"]["task"] = "classification"
        fake.add("cls", tmp_path / "b.pk", meta, 3)
        with pytest.raises(InvalidArgument, match="classification folder, not a text-gen"):
            await _ids(service, "cls")
    finally:
        await service.close()


async def test_a_finish_event_ends_every_stream(tmp_path: Path) -> None:
    fake = FakeVersions()
    fake.add("lm", *_pack(build_gpt2_folder(tmp_path / "a"), tmp_path / "a.pk"), 1)
    service = GenerationService({}, GenerationConfig(), "cpu", PublishedDecoders(fake))
    try:
        events = await service.generate("lm", Prompt(text="hi"), SamplingParams(max_new_tokens=2))
        last = [e async for e in events][-1]
        assert isinstance(last, FinishEvent) and last.generated_tokens == 2
    finally:
        await service.close()
