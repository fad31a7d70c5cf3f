"""Every bad generation input is refused before anything is queued, naming the problem."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from p2pagent.errors import InvalidArgument, NotFound
from p2pagent.inference.generation.engine import DecodeEngine
from p2pagent.inference.generation.folder import (
    ChatMessage,
    DecoderFolder,
    check_decoder_folder,
    load_decoder_folder,
)
from p2pagent.inference.generation.sampling import SamplingParams


@pytest.fixture(scope="module")
def llama(decoder_folders: dict[str, Path]) -> DecoderFolder:
    return load_decoder_folder(decoder_folders["llama"])


@pytest.mark.parametrize(
    ("prompt_len", "params", "match"),
    [
        (0, SamplingParams(), "prompt is empty"),
        (512, SamplingParams(), "context is 512"),
        (10, SamplingParams(max_new_tokens=0), "max_new_tokens must be at least 1"),
        (10, SamplingParams(max_new_tokens=503), "at most 502 new tokens"),
        (10, SamplingParams(temperature=-0.1), "temperature must be >= 0"),
        (10, SamplingParams(temperature=math.nan), "temperature"),
        (10, SamplingParams(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (10, SamplingParams(top_p=1.5), "top_p"),
        (10, SamplingParams(top_k=-1), "top_k"),
        (10, SamplingParams(stop=("",)), "stop string"),
        (10, SamplingParams(stop=tuple("abcdefghijklmnopq")), "at most 16 stop strings"),
    ],
)
def test_bad_parameters_refused_before_queueing(
    llama: DecoderFolder, prompt_len: int, params: SamplingParams, match: str
) -> None:
    engine = DecodeEngine(llama)
    with pytest.raises(InvalidArgument, match=match):
        engine.submit([5] * prompt_len, params)
    assert engine.idle


def test_token_id_outside_the_vocabulary(llama: DecoderFolder) -> None:
    engine = DecodeEngine(llama)
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        engine.submit([1, 10**6], SamplingParams())
    assert engine.idle


def test_unknown_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        check_decoder_folder(tmp_path / "nope")


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "bert", "architectures": ["BertModel"]},
        {"model_type": "distilbert"},
    ],
)
def test_encoder_model_cannot_generate(tmp_path: Path, config: dict[str, object]) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(InvalidArgument, match="encoder model cannot generate"):
        check_decoder_folder(folder)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: (d / "pytorch_model.bin").write_bytes(b"x"), "pickled weights"),
        (lambda d: (d / "model.safetensors").unlink(), "no .safetensors"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({"model_type": "gpt2", "auto_map": {"AutoModel": "x.Y"}})
            ),
            "custom code",
        ),
        (lambda d: (d / "config.json").write_text("[1]"), "not a JSON object"),
    ],
)
def test_folder_checks(
    tmp_path: Path, decoder_folders: dict[str, Path], change: object, match: str
) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in decoder_folders["gpt2"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    check_decoder_folder(folder)
    change(folder)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=match):
        check_decoder_folder(folder)


def test_chat_template_renders_and_is_sandboxed(llama: DecoderFolder) -> None:
    ids = llama.render_chat([ChatMessage("system", "Be short."), ChatMessage("user", "Hi")])
    text = llama.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.startswith("<s><<SYS>>") and text.endswith("[INST] Hi [/INST]")
    assert ids.count(llama.tokenizer.token_to_id("<s>") or -1) == 1
    hostile = DecoderFolder(**{**vars(llama), "chat_template": "{{ ''.__class__.__mro__ }}"})
    with pytest.raises(InvalidArgument, match="chat template failed"):
        hostile.render_chat([ChatMessage("user", "x")])
    with pytest.raises(InvalidArgument, match="1 to 256 chat messages"):
        llama.render_chat([])


def test_folder_without_chat_template_refuses_messages(decoder_folders: dict[str, Path]) -> None:
    gpt2 = load_decoder_folder(decoder_folders["gpt2"])
    with pytest.raises(InvalidArgument, match="no chat template"):
        gpt2.render_chat([ChatMessage("user", "x")])


def test_a_config_asking_for_more_than_its_weights_is_refused_before_it_loads(
    decoder_folders: dict[str, Path], tmp_path: Path
) -> None:
    """A publisher's config.json with far more layers than the safetensors hold would make
    every node that loads the folder allocate them (fresh, random): refused first."""
    folder = tmp_path / "inflated"
    shutil.copytree(decoder_folders["gpt2"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 1000
    config["n_embd"] = 1024
    config["n_head"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidArgument, match="describes a model of"):
        load_decoder_folder(folder)
