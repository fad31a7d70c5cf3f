"""Optional differential privacy for what a member contributes: its update since the last
average (its parameters minus the parameters it started from) is clipped to an L2 norm of
``clip_norm`` and Gaussian noise of standard deviation ``noise_multiplier x clip_norm`` is
added to every value, before anything leaves the training process (the Gaussian mechanism of
DP-FedAvg). The noise multiplier is reported with every round; turning it into an (epsilon,
delta) budget depends on sampling and rounds, and is left to the user's accountant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2pagent.errors import InvalidArgument

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DPConfig:
    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise InvalidArgument("clip_norm must be > 0")
        if not self.noise_multiplier >= 0:
            raise InvalidArgument("noise_multiplier must be >= 0")


def privatize(
    current: Vector, start: Vector, dp: DPConfig, rng: np.random.Generator
) -> tuple[Vector, float]:
    """``start`` plus the clipped, noised update; and the update's norm before clipping."""
    update = current.astype(np.float64) - start.astype(np.float64)
    norm = float(np.linalg.norm(update))
    if norm > dp.clip_norm:
        update *= dp.clip_norm / norm
    if dp.noise_multiplier:
        update += rng.normal(0.0, dp.noise_multiplier * dp.clip_norm, size=update.shape)
    return (start.astype(np.float64) + update).astype(np.float32), norm
