"""The folders built in code are complete Hugging Face folders and the same from one seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from p2pagent.testing.decoder_folders import BUILDERS, LLAMA_BOS


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_folder_has_config_weights_and_tokenizer(
    decoder_folders: dict[str, Path], family: str
) -> None:
    folder = decoder_folders[family]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = "Return the path of the file."
    ids = tokenizer.encode(text).ids
    # Trained on docstrings: common English words are single tokens, not bytes.
    assert len(ids) < len(text) // 2
    assert tokenizer.decode(ids) == text
    assert max(ids) < config["vocab_size"]


def test_llama_folder_has_a_chat_template_and_bos(decoder_folders: dict[str, Path]) -> None:
    folder = decoder_folders["llama"]
    assert "messages" in json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tokenizer.encode("hi").ids[0] == tokenizer.token_to_id(LLAMA_BOS)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    build = BUILDERS["gpt2"]
    a = build(tmp_path / "a", seed=1).joinpath("model.safetensors").read_bytes()
    b = build(tmp_path / "b", seed=1).joinpath("model.safetensors").read_bytes()
    c = build(tmp_path / "c", seed=2).joinpath("model.safetensors").read_bytes()
    assert a == b
    assert a != c
