"""A causal language model folder's publish check: the folder checks accept it with task
``generation``, and the checking child loads it as ``Generate`` does and decodes a few greedy
tokens; a folder whose weights do not fit its config is refused with the loader's message.
(Each case starts a real child interpreter.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from p2pagent.errors import InvalidArgument
from p2pagent.inference.hf import pack
from p2pagent.inference.hf.folder import folder_metadata
from p2pagent.models.publish_check import check_folder_pack, check_model
from p2pagent.testing.decoder_folders import build_gpt2_folder, build_llama_folder


def _packed(root: Path, dest: Path) -> tuple[Path, dict[str, Any]]:
    files = pack.describe_folder(root)
    with dest.open("wb") as out:
        for piece in pack.pack_pieces(root, files):
            out.write(piece)
    return dest, folder_metadata(root, files)


@pytest.mark.parametrize("build", [build_gpt2_folder, build_llama_folder])
def test_a_decoder_folder_passes_by_generating(tmp_path: Path, build: Any) -> None:
    path, meta = _packed(build(tmp_path / "src"), tmp_path / "m.hfpack")
    assert meta["arch_config"]["task"] == "generation"
    check_folder_pack(path, meta)
    seconds = asyncio.run(check_model(path, "hf_folder", meta, timeout_s=120, memory_bytes=4 << 30))
    assert seconds > 0


def test_a_decoder_folder_whose_weights_do_not_fit_its_config_is_refused(
    tmp_path: Path,
) -> None:
    root = build_gpt2_folder(tmp_path / "src")
    config = json.loads((root / "config.json").read_text())
    config["n_embd"] = config["n_embd"] * 2  # the saved tensors keep the old width
    (root / "config.json").write_text(json.dumps(config))
    path, meta = _packed(root, tmp_path / "m.hfpack")
    check_folder_pack(path, meta)  # the config files alone look fine
    refused = r"failed its check: model folder .* does not load: .*ignore_mismatched_sizes"
    with pytest.raises(InvalidArgument, match=refused):
        asyncio.run(check_model(path, "hf_folder", meta, timeout_s=120, memory_bytes=4 << 30))
