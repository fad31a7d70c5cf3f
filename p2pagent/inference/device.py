"""Choosing the inference device and the number of torch threads.

``--device auto|cpu|cuda|cuda:N``: ``auto`` picks CUDA device 0 when one is usable, else the
CPU. The description (``"cpu"`` or ``"cuda:0 (NVIDIA H100 80GB HBM3)"``) goes into the node's
membership tags and Status, so peers and operators see what each node runs on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from p2pagent.errors import ConfigError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    description: str

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def select_device(value: str) -> DeviceInfo:
    """Parses a ``--device`` value; raises ConfigError saying what is accepted and why not."""
    text = value.strip().lower()
    if text == "auto":
        return select_device("cuda:0") if torch.cuda.is_available() else _cpu()
    if text == "cpu":
        return _cpu()
    m = _CUDA.match(text)
    if not m:
        raise ConfigError(f"invalid device {value!r}: use auto, cpu, or cuda:N (e.g. cuda:0)")
    index = int(m.group(1) or 0)
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {value!r} requested but CUDA is not available on this host "
            "(use --device cpu or auto)"
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"device {value!r} requested but this host has {count} CUDA device(s): "
            f"use cuda:0..cuda:{count - 1}"
        )
    name = torch.cuda.get_device_name(index)
    return DeviceInfo(torch.device("cuda", index), f"cuda:{index} ({name})")


def _cpu() -> DeviceInfo:
    return DeviceInfo(torch.device("cpu"), "cpu")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def intra_op_threads(configured: int, device: DeviceInfo) -> int:
    """The thread count to use: the configured one, or the auto rule (see InferenceConfig)."""
    if configured > 0:
        return configured
    if device.is_cuda:
        return 1
    return max(1, available_cores() - 1)


def configure_threads(threads: int) -> None:
    """Sets torch's intra-op threads for the process (a process-wide setting)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
