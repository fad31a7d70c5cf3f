"""A decoder model loaded from a local Hugging Face folder: the causal LM (transformers,
``trust_remote_code=False``, offline, safetensors only), its tokenizer (``tokenizers``) and
its chat template (Jinja in a sandbox).

The loader takes a directory path and nothing else: where the folder came from (a local
path, or a version pulled through the mesh and materialised as a directory) is the caller's
business. Everything in the folder is treated as untrusted: code-bearing configurations
(``auto_map``) and pickled weights are refused, and the chat template runs in Jinja's
immutable sandbox.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from p2pagent.errors import InvalidArgument, NotFound, quoted

#: Weight files that would be unpickled to load; a folder holding one is refused.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
#: Most chat messages and characters of one message rendered through a template.
MAX_MESSAGES, MAX_MESSAGE_CHARS = 256, 1 << 20


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass
class DecoderFolder:
    """A loaded decoder: model, tokenizer and what the engine needs to know of them."""

    path: Path
    model: Any  # a transformers PreTrainedModel (transformers is not fully typed)
    tokenizer: Tokenizer
    architecture: str
    context: int
    eos_token_ids: frozenset[int]
    bos_token: str
    eos_token: str
    chat_template: str | None
    #: Key and value bytes one token holds across all layers.
    kv_bytes_per_token: int
    #: Decoder layers (a step grows the cache one layer at a time, copying that layer).
    layers: int

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def render_chat(self, messages: list[ChatMessage]) -> list[int]:
        """Token ids of ``messages`` rendered with the folder's chat template, ready for the
        assistant's answer. The template may add the BOS token itself, so the rendered text
        is encoded without the tokenizer's own special tokens."""
        if self.chat_template is None:
            raise InvalidArgument(
                f"model folder {self.path.name!r} has no chat template: send a text prompt"
            )
        if not messages or len(messages) > MAX_MESSAGES:
            raise InvalidArgument(f"send 1 to {MAX_MESSAGES} chat messages, got {len(messages)}")
        for m in messages:
            if len(m.content) > MAX_MESSAGE_CHARS:
                raise InvalidArgument(f"a chat message is over {MAX_MESSAGE_CHARS} characters")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            text = env.from_string(self.chat_template).render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=True,
            )
        except TemplateError as exc:
            raise InvalidArgument(
                f"the model's chat template failed on these messages: {exc}"
            ) from None
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path.name} in the model folder is unreadable: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"{path.name} in the model folder is not a JSON object")
    return value


def check_decoder_folder(path: Path) -> dict[str, Any]:
    """The folder's config.json, after the checks that need no model load: present,
    safetensors weights and no pickles, no custom code, a causal LM architecture that
    transformers knows. Raises NotFound or InvalidArgument saying what is wrong."""
    if not path.is_dir():
        raise NotFound(f"model folder {quoted(str(path))} does not exist")
    config = _read_json(path / "config.json") if (path / "config.json").exists() else None
    if config is None:
        raise InvalidArgument(f"{path.name!r} has no config.json: not a Hugging Face folder")
    names = os.listdir(path)
    pickled = sorted(n for n in names if n.endswith(PICKLED_SUFFIXES))
    if pickled:
        raise InvalidArgument(
            f"model folder has pickled weights ({', '.join(pickled)}): only safetensors load"
        )
    if not any(n.endswith(".safetensors") for n in names):
        raise InvalidArgument("model folder has no .safetensors weights")
    if "auto_map" in config:
        raise InvalidArgument("model folder asks for custom code (auto_map): refused")
    if not (path / "tokenizer.json").exists():
        raise InvalidArgument("model folder has no tokenizer.json (a fast tokenizer is needed)")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    # The architectures the folder was saved with decide (BERT, say, has a causal head in
    # transformers, but a folder saved as BertModel is an encoder); without them, its type.
    if architectures and not causal.intersection(map(str, architectures)):
        raise InvalidArgument(
            f"model architecture {quoted(', '.join(map(str, architectures)))} is not a "
            "text-generation (causal LM) one: an encoder model cannot generate"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InvalidArgument(
            f"model type {quoted(str(model_type))} is not a text-generation (causal LM) "
            "architecture: an encoder model cannot generate"
        )
    return config


def _kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    text = config.get_text_config(decoder=True)
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def _context(config: Any) -> int:
    text = config.get_text_config(decoder=True)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise InvalidArgument("model config names no context length (max_position_embeddings)")


def load_decoder_folder(path: Path, device: str = "cpu") -> DecoderFolder:
    """Loads a checked folder onto ``device``, weights in float32 (CPU) as saved otherwise."""
    raw = check_decoder_folder(path)
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    from p2pagent.inference.hf import budget

    # On every node that loads it, not only where it was pushed: the publisher's config.json
    # must not make this process allocate more than the weights the folder holds.
    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[str(raw["model_type"])], None)
    if cls is None:
        raise InvalidArgument(f"transformers has no causal LM class for {raw['model_type']!r}")
    budget.check_allocation(cls, path, raw)

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, local_files_only=True, use_safetensors=True
        )
    except Exception as exc:  # transformers raises many kinds for a folder it cannot load
        raise InvalidArgument(f"model folder {path.name!r} does not load: {exc}") from None
    model = model.to(device).eval()  # type: ignore[arg-type]
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok_config = (
        _read_json(path / "tokenizer_config.json")
        if (path / "tokenizer_config.json").exists()
        else {}
    )
    eos = raw.get("eos_token_id")
    eos_ids = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
    template = tok_config.get("chat_template")
    return DecoderFolder(
        path=path,
        model=model,
        tokenizer=tokenizer,
        architecture=str(raw.get("model_type")),
        context=_context(model.config),
        eos_token_ids=eos_ids,
        bos_token=str(tok_config.get("bos_token") or ""),
        eos_token=str(tok_config.get("eos_token") or ""),
        chat_template=template if isinstance(template, str) else None,
        kv_bytes_per_token=_kv_bytes_per_token(model.config, model.dtype),
        layers=int(model.config.get_text_config(decoder=True).num_hidden_layers),
    )
