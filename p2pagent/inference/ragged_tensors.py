"""The engine's side of ragged batching on real tensors: each request's length, its inputs
padded to the batch's length (``ragged``'s rules), per-token outputs trimmed back.

Inputs are host tensors (numpy, from the wire or the node's tokenizer) or torch tensors;
padding copies a request only when it is shorter than the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from p2pagent.errors import InvalidArgument
from p2pagent.inference import ragged
from p2pagent.inference.tensors import HostTensor

if TYPE_CHECKING:
    import torch

    from p2pagent.inference.spec import InputTensor


def ragged_length(model: str, inputs: Sequence[InputTensor]) -> int:
    """The sequence length (dimension 1) all of a request's ragged inputs share."""
    lengths = {int(t.shape[1]) if len(t.shape) > 1 else -1 for t in inputs}
    if len(lengths) != 1 or min(lengths) < 1:
        raise InvalidArgument(
            f"model {model!r}: its inputs (token ids and attention mask) must all be "
            f"[rows, length] with the same length >= 1, received {sorted(lengths)}"
        )
    return lengths.pop()


def check_max_length(model: str, inputs: Sequence[InputTensor], max_length: int) -> None:
    """Token ids past the model's maximum are refused naming it (they would fail deep in
    the model: positions past its table)."""
    length = ragged_length(model, inputs)
    if length > max_length:
        raise InvalidArgument(
            f"model {model!r} takes at most {max_length} tokens per row, received {length}: "
            "shorten the input (or send text through Embed/Classify with truncate)"
        )


def _pad(t: InputTensor, length: int, value: int) -> InputTensor:
    if int(t.shape[1]) == length:
        return t
    if isinstance(t, HostTensor):
        return HostTensor(t.dtype, ragged.pad_to(t.array, length, value))
    import torch.nn.functional as F

    return F.pad(t, (0, length - int(t.shape[1])), value=value)


def pad_ragged(
    spec: ragged.RaggedInputs, parts: list[list[InputTensor]], bucket: int
) -> list[list[InputTensor]]:
    """Every request's inputs padded to the batch's length (its longest, bucketed)."""
    length = ragged.batch_length([int(p[0].shape[1]) for p in parts], bucket)
    return [[_pad(t, length, v) for t, v in zip(p, spec.pad_values)] for p in parts]


def trim_ragged(
    spec: ragged.RaggedInputs,
    names: Sequence[str],
    outs: list[list[torch.Tensor]],
    inputs: list[list[InputTensor]],
) -> list[list[torch.Tensor]]:
    """Per-token outputs cut back to each request's own length (the batch padded them)."""
    trimmed = []
    for out, ins in zip(outs, inputs):
        n = int(ins[0].shape[1])
        trimmed.append([o[:, :n] if name in spec.per_token else o for name, o in zip(names, out)])
    return trimmed
