"""Ragged batching: requests whose sequences have different lengths share one batch.

Pure (numpy arrays in, numpy arrays out; no clock, no torch). A model with ragged inputs
(token ids and their attention mask, shape [rows, length]) is batched by padding every
request to the batch's length: the longest in the batch, or that rounded up to a multiple of
``inference.length_bucket`` (length buckets: fewer distinct shapes, which compiled and GPU
kernels like, at the price of more padding). The mask marks padding with 0, so a model that
honours its attention mask gives every row the output it would get alone.

A batch is bounded by tokens as well as rows: ``padded_tokens`` (rows x batch length) must
stay within ``inference.max_batch_tokens``, since a transformer's cost follows tokens. And by
padding: a request that would make more than ``inference.max_padding_ratio`` (0.1) of the
batch's slots padding waits for a later batch (requests of similar lengths then share one).
On a CPU a padded slot costs what a real token costs: sentences of 8 to 200 tokens batched in
arrival order were 70% padding, slower than batching only equal lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class RaggedInputs:
    """How a model's inputs are padded: one pad value per input port, in port order (the
    token ids pad with the model's pad token, the attention mask with 0). Outputs named in
    ``per_token`` have a sequence dimension (dimension 1) trimmed back per request."""

    pad_values: tuple[int, ...]
    per_token: frozenset[str] = frozenset()


def bucket_length(length: int, bucket: int) -> int:
    """The padded length of a sequence of ``length``: rounded up to a multiple of ``bucket``
    (0 or 1: the length itself)."""
    if bucket <= 1:
        return length
    return -(-length // bucket) * bucket


def batch_length(lengths: Sequence[int], bucket: int) -> int:
    """The length every row of a batch is padded to."""
    return bucket_length(max(lengths), bucket)


def padded_tokens(rows: int, lengths: Sequence[int], bucket: int) -> int:
    return rows * batch_length(lengths, bucket)


def fits(
    rows: int,
    lengths: Sequence[int],
    more_rows: int,
    more_length: int,
    *,
    max_rows: int,
    max_tokens: int,
    bucket: int,
    real_tokens: int = 0,
    max_padding: float = 1.0,
) -> bool:
    """Whether a request of ``more_rows`` x ``more_length`` joins a batch of ``rows`` rows
    whose requests have ``lengths`` (``real_tokens`` in all) without passing the row bound,
    the token bound, or a share ``max_padding`` of padded slots. An empty batch always takes
    it (a request is never starved by its own size)."""
    if rows == 0:
        return True
    if rows + more_rows > max_rows:
        return False
    padded = padded_tokens(rows + more_rows, [*lengths, more_length], bucket)
    if padded > max_tokens:
        return False
    real = real_tokens + more_rows * more_length
    return max_padding >= 1.0 or padding_ratio(real, padded) <= max_padding


def pad_to(array: np.ndarray, length: int, value: int) -> np.ndarray:
    """``array`` ([rows, n, ...]) padded with ``value`` along dimension 1 to ``length``."""
    import numpy as np  # here, not at the top: the batching policy needs no numpy

    n = array.shape[1]
    if n == length:
        return array
    if n > length:
        raise ValueError(f"cannot pad a sequence of {n} down to {length}")
    widths = [(0, 0), (0, length - n)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, constant_values=value)


def padding_ratio(real_tokens: int, padded: int) -> float:
    """The share of a batch's token slots that are padding (0 for an empty batch)."""
    return 0.0 if padded <= 0 else 1.0 - real_tokens / padded
