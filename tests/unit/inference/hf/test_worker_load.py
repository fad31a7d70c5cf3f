"""Loading a folder in the model worker from the daemon's descriptor (inference/hf/
worker_load.py), in this process: what the daemon sends is checked (names, ranges inside the
pack), a model past the memory limit is refused naming the knob before it is allocated, a
config describing more than its weights is refused, and the model built from the pack's
bytes equals ``transformers``' own load of the folder. Plus the knob's auto value."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from p2pagent.errors import ConfigError, InvalidArgument, ResourceExhausted
from p2pagent.inference.config import WORKER_MEMORY_HEADROOM, InferenceConfig
from p2pagent.inference.device import DeviceInfo, select_device
from p2pagent.inference.engine import resolve_config
from p2pagent.inference.hf import pack, worker_load
from p2pagent.inference.hf.model import pool
from p2pagent.inference.hf.worker_load import FileRange, check_fits, load_from_pack, model_files
from p2pagent.testing import hf_folders


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("worker-load")
    hf_folders.embedding_folder(d / "emb")
    hf_folders.classifier_folder(d / "cls")
    return d


def _ranges(folder: Path, dest: Path) -> tuple[Path, list[list[object]]]:
    """The folder packed as a node stores it, and the ranges the daemon would send."""
    files = pack.describe_folder(folder)
    with dest.open("wb") as out:
        for piece in pack.pack_pieces(folder, files):
            out.write(piece)
    with dest.open("rb") as f:
        _, offset = pack.read_index(f)
    ranges = []
    for entry in files:
        ranges.append(FileRange(entry.path, offset, entry.size))
        offset += entry.size
    return dest, [r.pack() for r in model_files(ranges)]


@pytest.fixture
def opened(built: Path, tmp_path: Path) -> Iterator[tuple[int, list[list[object]]]]:
    path, ranges = _ranges(built / "emb", tmp_path / "emb.hfpack")
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd, ranges
    finally:
        os.close(fd)


HEAD = {"task": "embedding", "pooling": "mean", "normalize": True}


def test_the_model_built_from_the_pack_equals_transformers_load_of_the_folder(
    built: Path, opened: tuple[int, list[list[object]]]
) -> None:
    import transformers

    fd, ranges = opened
    assert sorted(str(r[0]) for r in ranges) == ["config.json", "model.safetensors"]
    model = load_from_pack(fd, ranges, "BertModel", HEAD, 0)
    reference = transformers.BertModel.from_pretrained(str(built / "emb")).eval()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.inference_mode():
        got = model(ids, mask)["embedding"]
        want = torch.nn.functional.normalize(pool(reference(ids, mask)[0], mask, "mean"), dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_classifier_keeps_its_trained_head(built: Path, tmp_path: Path) -> None:
    import transformers

    path, ranges = _ranges(built / "cls", tmp_path / "cls.hfpack")
    fd = os.open(path, os.O_RDONLY)
    try:
        model = load_from_pack(fd, ranges, "BertForSequenceClassification", {"task": "x"}, 0)
    finally:
        os.close(fd)
    reference = transformers.BertForSequenceClassification.from_pretrained(str(built / "cls"))
    ids = torch.tensor([[2, 7, 9, 3]])
    with torch.inference_mode():
        got = model(ids, torch.ones_like(ids))["logits"]
        want = reference.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ("not a list", "without its list of files"),
        ([["../config.json", 0, 1]], "named '../config.json'"),
        ([["config.json", -1, 1]], "a bad offset or size"),
        ([["config.json", 0, 1 << 40]], "past the end of the pack"),
        ([["config.json", 0, 8]], "needs its config.json and safetensors weights"),
    ],
)
def test_what_the_daemon_sends_is_checked(
    opened: tuple[int, list[list[object]]], files: object, words: str
) -> None:
    fd, _ = opened
    with pytest.raises(InvalidArgument) as err:
        load_from_pack(fd, files, "BertModel", HEAD, 0)
    assert words in str(err.value)


def test_a_model_past_the_memory_limit_is_refused_naming_the_knob(
    built: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "big"
    shutil.copytree(built / "emb", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16)
    (folder / "config.json").write_text(json.dumps(config))
    path, ranges = _ranges(folder, tmp_path / "big.hfpack")
    fd = os.open(path, os.O_RDONLY)
    try:
        in_use = worker_load.memory_in_use()
        with pytest.raises(ResourceExhausted) as err:
            load_from_pack(fd, ranges, "BertModel", HEAD, in_use + (256 << 20))
        assert "raise inference.worker_memory_bytes" in str(err.value)
        # Without a limit the same folder is refused for what it is: a config its weights
        # do not fill.
        with pytest.raises(InvalidArgument) as bad:
            load_from_pack(fd, ranges, "BertModel", HEAD, 0)
        assert "does not match the weights" in str(bad.value)
    finally:
        os.close(fd)


def test_check_fits_counts_what_is_in_use() -> None:
    check_fits(100 << 20, 0, 1 << 40)  # no limit
    check_fits(100 << 20, 1 << 30, 900 << 20)
    with pytest.raises(ResourceExhausted) as err:
        check_fits(200 << 20, 1 << 30, 900 << 20)
    assert "needs 200 MiB" in str(err.value) and "leaves 124 MiB" in str(err.value)


def test_the_memory_knob_is_checked_and_resolved() -> None:
    with pytest.raises(ConfigError, match="worker_memory_bytes"):
        InferenceConfig(worker_memory_bytes=-2).validate()
    with pytest.raises(ConfigError, match="at least 768 MiB"):
        InferenceConfig(worker_memory_bytes=1 << 20).validate()
    cfg = InferenceConfig(cache_budget_bytes=1 << 30)
    cpu = resolve_config(cfg, select_device("cpu"))
    assert cpu.worker_memory_bytes == (1 << 30) + WORKER_MEMORY_HEADROOM
    cuda = resolve_config(cfg, DeviceInfo("cuda:0", "test GPU"))
    assert cuda.worker_memory_bytes == -1  # no limit: the driver's own allocations count
    explicit = InferenceConfig(worker_memory_bytes=3 << 30)
    assert resolve_config(explicit, select_device("cpu")).worker_memory_bytes == 3 << 30
