"""Settings of parameter averaging (the ``[training]`` section of the node config)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pagent.errors import ConfigError

#: Values of ``compression``.
COMPRESSIONS = ("none", "fp16", "int8")


@dataclass
class TrainingConfig:
    """Group sizes, adaptive deadlines and the checks a received part must pass. Every field
    is checked by :meth:`validate`."""

    #: Most members in one averaging group. Up to this many participants form one group; more
    #: are laid out on a grid with sides of about this length and each round groups along one
    #: axis of it, as Moshpit SGD does, so the whole run converges in a few rounds.
    group_size: int = 16
    #: Seconds each phase of a round waits before any arrival time was measured.
    initial_phase_timeout: float = 10.0
    #: The adaptive phase timeout never goes below this many seconds...
    min_phase_timeout: float = 0.5
    #: ... nor above this many.
    max_phase_timeout: float = 60.0
    #: Phase timeout = median arrival delay + ``deadline_spread_mult`` x the median absolute
    #: deviation of recent arrivals (robust: one slow member does not stretch it).
    deadline_spread_mult: float = 6.0
    #: ... times ``deadline_margin_mult``, so a normal round ends well before its deadline.
    deadline_margin_mult: float = 2.0
    #: Arrival delays remembered for the estimate.
    deadline_window: int = 64
    #: A part whose norm is over this many times the median norm of the same slice's parts
    #: (three parts or more) is refused as an outlier.
    outlier_norm_factor: float = 10.0
    #: Largest sample count one member may claim for one round.
    max_sample_count: int = 1_000_000_000
    #: Parts that arrive before their round begins here are kept up to
    #: ``2 x (max_rounds_ahead + 1)`` times the run's parameter bytes.
    max_rounds_ahead: int = 2
    #: What parameters travel as: "none" (float32), "fp16" (half the bytes) or "int8" (8-bit
    #: blocks of 256 values with a float32 scale each: 0.27x the bytes, about 0.4% error
    #: per block's largest value). Every member rounds the averaged slices alike, so members
    #: still agree bit for bit.
    compression: str = "none"
    #: Largest parameter vector (bytes of float32) a run on this node may average; also the
    #: largest part accepted from a peer.
    max_parameter_bytes: int = 2 * 1024 * 1024 * 1024

    def validate(self) -> TrainingConfig:
        if self.group_size < 2:
            raise ConfigError(f"training.group_size must be at least 2, not {self.group_size}")
        if not 0 < self.min_phase_timeout <= self.max_phase_timeout:
            raise ConfigError(
                "training.min_phase_timeout must be > 0 and <= training.max_phase_timeout "
                f"(got {self.min_phase_timeout} and {self.max_phase_timeout})"
            )
        if self.initial_phase_timeout <= 0:
            raise ConfigError("training.initial_phase_timeout must be > 0 seconds")
        if self.deadline_spread_mult < 0 or self.deadline_margin_mult < 1:
            raise ConfigError(
                "training.deadline_spread_mult must be >= 0 and training.deadline_margin_mult >= 1"
            )
        if self.deadline_window < 1:
            raise ConfigError("training.deadline_window must be at least 1")
        if self.outlier_norm_factor <= 1:
            raise ConfigError("training.outlier_norm_factor must be > 1")
        if self.max_sample_count < 1:
            raise ConfigError("training.max_sample_count must be at least 1")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"training.compression must be one of {', '.join(COMPRESSIONS)}, "
                f"not {self.compression!r}"
            )
        if self.max_parameter_bytes < 4:
            raise ConfigError("training.max_parameter_bytes must be at least 4")
        if self.max_rounds_ahead < 0:
            raise ConfigError("training.max_rounds_ahead must be >= 0")
        return self
