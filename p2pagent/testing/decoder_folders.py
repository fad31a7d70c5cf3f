"""Tiny GPT-2 and Llama folders with seeded random weights, built in code, for tests and the
generation benchmark: no download, the same bytes from the same seed.

Each folder is what a Hugging Face causal language model looks like on disk: ``config.json``,
``model.safetensors``, ``generation_config.json`` and a fast tokenizer (``tokenizer.json``,
``tokenizer_config.json``) trained here with the ``tokenizers`` library on the docstrings of a
fixed list of standard-library modules, so it splits real English and Python into real
subwords. The Llama folder carries a chat template. Their text is nonsense (the weights are
random); the machinery that runs them is real. Imports torch and transformers: tests and
benchmarks only.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

#: Modules whose docstrings train the tokenizer: a fixed list, so the vocabulary is the same
#: in every run on one Python version.
CORPUS_MODULES = (
    "argparse", "asyncio", "collections", "contextlib", "dataclasses", "functools", "heapq",
    "inspect", "itertools", "json", "logging", "os", "pathlib", "random", "re", "shutil",
    "string", "subprocess", "textwrap", "threading", "unittest",
)  # fmt: skip

#: Special tokens of each family, as their real tokenizers name them.
GPT2_EOS = "<|endoftext|>"
LLAMA_BOS, LLAMA_EOS, LLAMA_UNK = "<s>", "</s>", "<unk>"

#: A Llama-2-style chat template (Jinja, rendered in a sandbox by the generation loader).
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>>\n{{ message['content'] }}\n<</SYS>>\n\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class DecoderSize:
    """Width of a built model: ``tiny`` for tests; ``small`` and ``medium`` for the
    benchmark (``medium``, ~40M parameters, is large enough that on a CPU the forward pass,
    not Python, is most of a step)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    context: int
    vocab: int


SIZES = {
    "tiny": DecoderSize(hidden=64, layers=2, heads=4, kv_heads=2, context=512, vocab=1024),
    "small": DecoderSize(hidden=256, layers=4, heads=8, kv_heads=4, context=1024, vocab=2048),
    "medium": DecoderSize(hidden=768, layers=6, heads=12, kv_heads=4, context=1024, vocab=2048),
}


def corpus() -> list[str]:
    """The docstrings the tokenizer is trained on (modules, classes and functions)."""
    texts: list[str] = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        if module.__doc__:
            texts.append(module.__doc__)
        for _, member in sorted(vars(module).items()):
            own = inspect.isfunction(member) or inspect.isclass(member)
            doc = inspect.getdoc(member) if own and member.__module__ == name else None
            if doc:
                texts.append(doc)
    return texts


def build_tokenizer(vocab_size: int, specials: list[str], bos: str | None) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``corpus()``; ``bos``, when
    given, is prepended to every encoding as Llama's tokenizer does."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    if bos is None:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def build_gpt2_folder(path: Path, seed: int = 0, size: str = "tiny") -> Path:
    """Writes a GPT-2 folder at ``path`` (created) and returns it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = SIZES[size]
    tokenizer = build_tokenizer(shape.vocab, [GPT2_EOS], bos=None)
    eos = tokenizer.token_to_id(GPT2_EOS)
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=shape.context,
        n_embd=shape.hidden,
        n_layer=shape.layers,
        n_head=shape.heads,
        bos_token_id=eos,
        eos_token_id=eos,
        # Wider than GPT-2's 0.02: random logits then have clear winners, so a greedy
        # token is not decided by rounding in the last bit.
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()  # type: ignore[no-untyped-call]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": GPT2_EOS,
        "eos_token": GPT2_EOS,
        "unk_token": GPT2_EOS,
        "model_max_length": shape.context,
    }
    return _save(path, model, tokenizer, tokenizer_config)


def build_llama_folder(path: Path, seed: int = 0, size: str = "tiny") -> Path:
    """Writes a Llama folder (with a chat template) at ``path`` (created) and returns it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SIZES[size]
    tokenizer = build_tokenizer(shape.vocab, [LLAMA_UNK, LLAMA_BOS, LLAMA_EOS], bos=LLAMA_BOS)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=shape.hidden,
        intermediate_size=shape.hidden * 2,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.context,
        bos_token_id=tokenizer.token_to_id(LLAMA_BOS),
        eos_token_id=tokenizer.token_to_id(LLAMA_EOS),
        pad_token_id=tokenizer.token_to_id(LLAMA_UNK),
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": LLAMA_BOS,
        "eos_token": LLAMA_EOS,
        "unk_token": LLAMA_UNK,
        "pad_token": LLAMA_UNK,
        "model_max_length": shape.context,
        "chat_template": LLAMA_CHAT_TEMPLATE,
    }
    return _save(path, model, tokenizer, tokenizer_config)


def _save(
    path: Path, model: torch.nn.Module, tokenizer: Tokenizer, tokenizer_config: dict[str, object]
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)  # type: ignore[operator]  # safetensors is the default
    tokenizer.save(str(path / "tokenizer.json"))
    _write_json(path / "tokenizer_config.json", tokenizer_config)
    return path


#: Builders by family, for tests parametrised over both.
BUILDERS = {"gpt2": build_gpt2_folder, "llama": build_llama_folder}
