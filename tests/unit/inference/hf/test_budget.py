"""A folder's config.json cannot make a node allocate more than the folder's weights hold
(inference/hf/budget.py), checked on every node before transformers builds the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers

from p2pagent.errors import InvalidArgument
from p2pagent.inference.hf import budget
from p2pagent.inference.hf.model import load_folder
from p2pagent.testing import hf_folders


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("budget")
    hf_folders.embedding_folder(d / "emb")
    hf_folders.classifier_folder(d / "cls")
    hf_folders.token_classifier_folder(d / "ner")
    return d


def _config(folder: Path) -> dict[str, object]:
    doc = json.loads((folder / "config.json").read_text())
    assert isinstance(doc, dict)
    return doc


def _with(built: Path, tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "changed"
    shutil.copytree(built / "cls", folder)
    (folder / "config.json").write_text(json.dumps({**_config(folder), **changes}))
    return folder


@pytest.mark.parametrize("name", ["emb", "cls", "ner"])
def test_a_folder_whose_config_matches_its_weights_passes(built: Path, name: str) -> None:
    folder = built / name
    cls = getattr(transformers, _config(folder)["architectures"][0])  # type: ignore[index]
    budget.check_allocation(cls, folder, _config(folder))
    held = budget.weight_elements(folder) * 4
    assert held > 0
    assert held <= budget.skeleton_bytes(cls, _config(folder)) <= held + budget.MARGIN_BYTES


def test_a_position_table_past_the_weights_is_refused_before_anything_is_built(
    built: Path, tmp_path: Path
) -> None:
    folder = _with(built, tmp_path, max_position_embeddings=2_000_000)  # 244 MiB of zeros
    with pytest.raises(InvalidArgument, match=r"describes a model of \d+ MiB but its safet"):
        load_folder(folder, "BertForSequenceClassification", {"task": "classification"})


def test_more_layers_than_a_node_builds_are_refused_by_the_numbers(
    built: Path, tmp_path: Path
) -> None:
    folder = _with(built, tmp_path, num_hidden_layers=100_000)
    with pytest.raises(InvalidArgument, match="num_hidden_layers = 100000: at most 1024"):
        load_folder(folder, "BertForSequenceClassification", {"task": "classification"})


def test_an_integer_past_any_model_is_refused_wherever_it_sits() -> None:
    with pytest.raises(InvalidArgument, match=r"text_config.vocab_size = 1099511627776"):
        budget.check_config_numbers({"text_config": {"vocab_size": 1 << 40}})
    budget.check_config_numbers({"vocab_size": 250_000, "use_cache": True, "layers": [1, 2]})
