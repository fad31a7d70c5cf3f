"""Choosing the inference device and the number of torch threads.

``--device auto|cpu|cuda|cuda:N``: ``auto`` picks CUDA device 0 when one is usable, else the
CPU. The description (``"cpu"`` or ``"cuda:0 (NVIDIA H100 80GB HBM3)"``) goes into the node's
membership tags and Status, so peers and operators see what each node runs on.

Torch is imported only when the answer needs it, because it costs ~200 MB of RSS and seconds
of start-up that a node serving no model never pays back. The rule:

- ``cpu``: no torch.
- ``auto``: a host without an NVIDIA driver has no CUDA device, whatever torch says; the
  driver shows as ``/proc/driver/nvidia``, ``/dev/nvidia*`` device nodes, or ``/dev/dxg``
  (WSL). None of them => ``cpu`` without importing torch. Any of them => torch is imported at
  start to ask ``torch.cuda.is_available()`` and the GPU's name for the tags.
- ``cuda:N``: torch is imported at start to check the device exists.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pagent.errors import ConfigError

if TYPE_CHECKING:
    import torch

_CUDA = re.compile(r"^cuda(?::(\d+))?$")

#: Where an NVIDIA driver shows itself; overridable by tests.
DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/dxg")


@dataclass(frozen=True)
class DeviceInfo:
    #: torch device string: "cpu" or "cuda:N".
    name: str
    description: str

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")

    @property
    def device(self) -> torch.device:
        """The torch device (imports torch: call it only where torch is needed anyway)."""
        import torch

        return torch.device(self.name)


def nvidia_driver_present(paths: tuple[str, ...] = DRIVER_PATHS) -> bool:
    """True when any sign of an NVIDIA driver exists (cheap: no torch, no CUDA init)."""
    return any(glob.glob(p) for p in paths)


def select_device(value: str) -> DeviceInfo:
    """Parses a ``--device`` value; raises ConfigError saying what is accepted and why not."""
    text = value.strip().lower()
    if text == "auto":
        if not nvidia_driver_present():
            return _cpu()
        import torch

        return select_device("cuda:0") if torch.cuda.is_available() else _cpu()
    if text == "cpu":
        return _cpu()
    m = _CUDA.match(text)
    if not m:
        raise ConfigError(f"invalid device {value!r}: use auto, cpu, or cuda:N (e.g. cuda:0)")
    index = int(m.group(1) or 0)
    import torch

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
    return DeviceInfo(f"cuda:{index}", f"cuda:{index} ({name})")


def _cpu() -> DeviceInfo:
    return DeviceInfo("cpu", "cpu")


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
    """Sets torch's intra-op threads for the calling thread and the process (imports torch)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
