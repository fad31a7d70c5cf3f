"""The checks a received part must pass, and the weighted average of one slice.

A part is refused (never averaged in) when its values are not finite, its length or dtype is
not the slice's, its sample count is absurd, or its norm is far above the other parts of the
same slice. Refusals name the sender; the driver logs them with the sender's verified
identity. The average is computed in float64 in a fixed order (sorted by sender), so the one
member that reduces a slice gives the same bits whatever order parts arrived in.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from p2pagent.training import quantize
from p2pagent.training.config import TrainingConfig
from p2pagent.training.messages import Vector


@dataclass(frozen=True, eq=False)
class Contribution:
    weight: float
    data: Vector


def slice_bounds(total: int, k: int) -> list[tuple[int, int]]:
    """[start, end) of each of ``k`` slices of a ``total``-long vector; sizes differ by <= 1."""
    return [(i * total // k, (i + 1) * total // k) for i in range(k)]


def weight_problem(weight: float, config: TrainingConfig) -> str | None:
    """Why ``weight`` (a claimed sample count) is refused, or None."""
    if not math.isfinite(weight) or weight <= 0:
        return f"sample count {weight!r} is not a positive finite number"
    if weight > config.max_sample_count:
        return (
            f"sample count {weight:.0f} is over training.max_sample_count "
            f"({config.max_sample_count})"
        )
    return None


def data_problem(data: object, length: int) -> str | None:
    """Why ``data`` is not a valid slice of ``length`` float32 values, or None."""
    import numpy as np  # here, not at the top: only a node that averages needs numpy

    if not isinstance(data, np.ndarray):
        return "slice is not an array"
    if data.dtype != np.float32:
        return f"slice has dtype {data.dtype}, the run averages float32"
    if data.ndim != 1 or data.shape[0] != length:
        return (
            f"slice has shape {tuple(data.shape)}, expected ({length},): the sender's "
            "parameters do not have the run's shapes"
        )
    if not np.isfinite(data).all():
        return "slice holds NaN or infinite values"
    return None


def outliers(parts: Mapping[str, Contribution], config: TrainingConfig) -> dict[str, str]:
    """Sender -> reason for each part whose norm is over ``outlier_norm_factor`` times the
    median norm of the parts (judged only with three parts or more: with two, neither is the
    odd one out)."""
    import numpy as np

    if len(parts) < 3:
        return {}
    norms = {s: float(np.linalg.norm(c.data.astype(np.float64))) for s, c in parts.items()}
    median = statistics.median(norms.values())
    if median <= 0:
        return {}
    limit = config.outlier_norm_factor * median
    return {
        s: f"slice norm {n:.3g} is over {config.outlier_norm_factor:g}x the group's median "
        f"{median:.3g}"
        for s, n in norms.items()
        if n > limit
    }


def weighted_average(parts: Mapping[str, Contribution]) -> tuple[Vector, float]:
    """(sum(w * x) / sum(w), sum(w)) over ``parts``, summed in sender order in float64."""
    import numpy as np

    if not parts:
        raise ValueError("no parts to average")
    total = 0.0
    length = next(iter(parts.values())).data.shape[0]
    # In place, in float64: a parameter set of hundreds of MiB must not cost a temporary
    # array per part.
    acc = np.zeros(length, dtype=np.float64)
    term = np.empty(length, dtype=np.float64)
    for sender in sorted(parts):
        c = parts[sender]
        np.multiply(c.data, c.weight, out=term, dtype=np.float64)
        np.add(acc, term, out=acc)
        total += c.weight
    np.divide(acc, total, out=acc)
    return acc.astype(np.float32), total


def compress(data: Vector, compression: str) -> Vector:
    """``data`` as the receiver will see it after ``compression`` (fp16: rounded to half;
    int8: rounded to its block's step)."""
    if compression == "fp16":
        return data.astype("f2").astype("f4")  # native float16, float32 (numpy spellings)
    if compression == "int8":
        return quantize.round_trip(data)
    return data
