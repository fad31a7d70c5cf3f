"""The folder check and the metadata a folder's own config files give, on tiny random
folders built in code; and the tokenizer's refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from p2pagent.errors import InvalidArgument
from p2pagent.inference.hf import pack
from p2pagent.inference.hf.folder import folder_metadata
from p2pagent.inference.hf.tokenize import TextTokenizer
from p2pagent.testing import hf_folders


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("folders")
    hf_folders.embedding_folder(d / "emb")
    hf_folders.classifier_folder(d / "cls")
    hf_folders.token_classifier_folder(d / "ner")
    return d


def _meta(root: Path) -> dict[str, object]:
    return folder_metadata(root, pack.describe_folder(root))


def test_metadata_comes_from_the_folders_config_files(built: Path) -> None:
    emb = _meta(built / "emb")
    assert emb["architecture"] == "BertModel"
    cfg = emb["arch_config"]
    assert isinstance(cfg, dict)
    assert (cfg["task"], cfg["pooling"], cfg["normalize"], cfg["max_length"]) == (
        "embedding", "mean", True, 48,
    )  # fmt: skip
    assert emb["outputs"] == [{"name": "embedding", "dtype": "float32", "shape": [-1, 32]}]
    cls = _meta(built / "cls")
    assert cls["arch_config"]["labels"] == list(hf_folders.CLASS_LABELS)  # type: ignore[index]
    assert cls["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, 3]}]
    ner = _meta(built / "ner")
    assert ner["arch_config"]["task"] == "token_classification"  # type: ignore[index]
    assert ner["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, -1, 5]}]


def test_a_causal_lm_folder_is_a_generation_model(tmp_path: Path) -> None:
    from p2pagent.testing.decoder_folders import build_gpt2_folder, build_llama_folder

    for build, arch in (
        (build_gpt2_folder, "GPT2LMHeadModel"),
        (build_llama_folder, "LlamaForCausalLM"),
    ):
        meta = _meta(build(tmp_path / arch))
        assert meta["architecture"] == arch
        cfg = meta["arch_config"]
        assert isinstance(cfg, dict)
        assert (cfg["task"], cfg["max_length"]) == ("generation", 512)
        assert [p["name"] for p in meta["inputs"]] == ["input_ids", "attention_mask"]  # type: ignore[attr-defined]
        assert meta["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, -1, 1024]}]


def _copy(built: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(built / "emb", tmp / "copy"))


def _config(root: Path, **changes: object) -> None:
    cfg = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: (r / "pytorch_model.bin").write_bytes(b"x"), "pickle-based weight file"),
        (lambda r: (r / "model.safetensors").unlink(), "no safetensors weights"),
        (lambda r: (r / "modeling_x.py").write_text("import os"), "Python code"),
        (lambda r: (r / "tokenizer.json").unlink(), "no tokenizer.json"),
        (lambda r: (r / "config.json").unlink(), "no config.json"),
        (lambda r: (r / "config.json").write_text("{nope"), "not valid JSON"),
        (lambda r: _config(r, architectures=["NoSuchModel"]), "'NoSuchModel'"),
        (lambda r: _config(r, architectures=[]), "exactly one architecture"),
        (lambda r: _config(r, auto_map={"AutoModel": "m.X"}), "auto_map"),
        (lambda r: (r / "modules.json").unlink(), "no sentence-transformers config"),
        (
            lambda r: (r / "1_Pooling" / "config.json").write_text("{}"),
            "turns on no mode",
        ),
    ],
)
def test_a_folder_a_node_cannot_serve_is_refused_naming_the_problem(
    built: Path, tmp_path: Path, change: object, words: str
) -> None:
    root = _copy(built, tmp_path)
    change(root)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=words):
        _meta(root)


def test_the_tokenizer_refuses_what_it_will_not_run(built: Path) -> None:
    tok = TextTokenizer(built / "emb" / "tokenizer.json", 16)
    (enc,) = tok.encode("m", ["Alice walked to Paris."], truncate=False)
    assert enc.ids[0] == 2 and enc.ids[-1] == 3  # [CLS] ... [SEP]
    assert enc.special[0] and enc.special[-1] and not any(enc.special[1:-1])
    with pytest.raises(InvalidArgument, match="give at least one text"):
        tok.encode("m", [], truncate=False)
    with pytest.raises(InvalidArgument, match="text 1 is empty"):
        tok.encode("m", ["a", ""], truncate=False)
    with pytest.raises(InvalidArgument, match="not valid UTF-8"):
        tok.encode("m", ["bad \udc80 surrogate"], truncate=False)
    with pytest.raises(InvalidArgument, match="takes at most 16"):
        tok.encode("m", ["the river " * 20], truncate=False)
    (cut,) = tok.encode("m", ["the river " * 20], truncate=True)
    assert len(cut.ids) == 16 and cut.truncated
