"""Loading a Hugging Face model folder inside the model worker, from the daemon's descriptor.

The worker cannot open the node's data folder (that is the point of it), so the daemon hands
it one open descriptor of the version's pack (``hf.pack``: the verified file the store holds)
and where in it each file the model needs lies: ``config.json`` and the ``*.safetensors``
files at the folder's top. The tokenizer stays in the daemon (token ids cross to the worker).

Everything the daemon sends is checked here again (names, ranges inside the file, sizes),
then, before anything large is allocated:

1. ``check_fits``: the model's size (built on the meta device, after the config's numbers
   are bounded) against what the worker's memory limit (``inference.worker_memory_bytes``)
   leaves: a model that cannot fit is refused with ResourceExhausted naming the limit, and
   the worker goes on serving its other models;
2. ``budget.check_wanted``: the model the config describes is within what the weights hold
   (a hostile config.json cannot make the worker allocate more than the folder's size).

Allocations past the limit that these checks do not foresee (the transient copies while the
weights load) fail inside the allocator; they are reported the same way.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pagent.errors import InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    from p2pagent.inference.hf.model import FolderModel

#: Largest config.json read.
MAX_CONFIG_BYTES = 1 << 20
#: Largest safetensors header read (the format's own bound is 100 MB).
MAX_HEADER_BYTES = 100 << 20
#: Most files one load names (a sharded checkpoint's shards and its config).
MAX_FILES = 256
#: The knob to name when a model does not fit.
KNOB = "inference.worker_memory_bytes"
#: What the daemon sends of a folder's metadata: the head over the hidden states.
HEAD_KEYS = ("task", "pooling", "normalize")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$")


@dataclass(frozen=True)
class FileRange:
    """One file of the folder inside the pack: its name and where its bytes are."""

    name: str
    offset: int
    size: int

    def pack(self) -> list[Any]:
        return [self.name, self.offset, self.size]

    @staticmethod
    def checked(raw: Any, file_size: int) -> FileRange:
        """A range from the daemon's message, inside a file of ``file_size`` bytes."""
        if not (isinstance(raw, list) and len(raw) == 3):
            raise InvalidArgument("a folder file that is not [name, offset, size]")
        name, offset, size = raw
        if not (isinstance(name, str) and _NAME.match(name)):
            raise InvalidArgument(f"a folder file named {str(name)[:64]!r}")
        if not (isinstance(offset, int) and isinstance(size, int) and offset >= 0 and size >= 0):
            raise InvalidArgument(f"folder file {name!r}: a bad offset or size")
        if offset + size > file_size:
            raise InvalidArgument(f"folder file {name!r} lies past the end of the pack")
        return FileRange(name, offset, size)


@dataclass(frozen=True)
class FolderLoad:
    """What the worker needs to build a Hugging Face folder's model from its pack: the
    architecture, the head over its hidden states and where its files lie in the pack."""

    architecture: str
    head: dict[str, Any]
    files: tuple[FileRange, ...]


def model_files(ranges: Sequence[FileRange]) -> list[FileRange]:
    """The files the worker reads: config.json and the safetensors at the folder's top."""
    return [
        r
        for r in ranges
        if "/" not in r.name and (r.name == "config.json" or r.name.endswith(".safetensors"))
    ]


def memory_in_use() -> int:
    """Bytes of this process's data segment (what ``RLIMIT_DATA`` counts), 0 if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_fits(model_bytes: int, limit: int, in_use: int) -> None:
    """ResourceExhausted when a model of ``model_bytes`` cannot fit under ``limit`` (0: no
    limit) with ``in_use`` bytes already taken."""
    if limit <= 0:
        return
    left = max(0, limit - in_use)
    if model_bytes > left:
        raise ResourceExhausted(
            f"it needs {model_bytes / 2**20:.0f} MiB and the model worker's memory limit "
            f"({KNOB} = {limit / 2**20:.0f} MiB, {in_use / 2**20:.0f} MiB in use) leaves "
            f"{left / 2**20:.0f} MiB: raise {KNOB} or serve it on a larger node"
        )


def _pread(fd: int, offset: int, size: int, what: str) -> bytearray:
    out = bytearray(size)
    view = memoryview(out)
    done = 0
    while done < size:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise InvalidArgument(f"{what} ends early in the pack")
        done += n
    return out


def _header(fd: int, r: FileRange) -> Mapping[str, Any]:
    if r.size < 8:
        raise InvalidArgument(f"the folder's {r.name} is not a safetensors file")
    (n,) = struct.unpack("<Q", _pread(fd, r.offset, 8, r.name))
    if n > min(MAX_HEADER_BYTES, r.size - 8):
        raise InvalidArgument(f"the folder's {r.name} declares a {n}-byte header")
    try:
        header = json.loads(bytes(_pread(fd, r.offset + 8, n, r.name)))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"the folder's {r.name} has a header that is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise InvalidArgument(f"the folder's {r.name} has a header that is not an object")
    return header


def load_from_pack(
    fd: int, raw_files: Any, architecture: Any, head: Any, memory_limit: int
) -> FolderModel:
    """The folder's model on the CPU, in eval mode, from the pack behind ``fd``."""
    from p2pagent.inference import safetensors_io
    from p2pagent.inference.hf import budget
    from p2pagent.inference.hf import model as hf_model

    if not isinstance(raw_files, list) or not 0 < len(raw_files) <= MAX_FILES:
        raise InvalidArgument("a folder load without its list of files")
    if not isinstance(head, dict) or not isinstance(architecture, str):
        raise InvalidArgument("a folder load without its architecture and head")
    size = os.fstat(fd).st_size
    ranges = [FileRange.checked(r, size) for r in raw_files]
    configs = [r for r in ranges if r.name == "config.json"]
    weights = [r for r in ranges if r.name.endswith(".safetensors")]
    if len(configs) != 1 or not weights:
        raise InvalidArgument("a folder load needs its config.json and safetensors weights")
    if configs[0].size > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"the folder's config.json is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(bytes(_pread(fd, configs[0].offset, configs[0].size, "config.json")))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"the folder's config.json is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise InvalidArgument("the folder's config.json must be a JSON object")
    cls = hf_model.architecture_class(architecture)
    held = 0
    for r in weights:
        held += budget.header_elements(_header(fd, r), r.name)
    budget.check_config_numbers(config)
    wanted = budget.skeleton_bytes(cls, config)
    # Size first: a model this worker cannot hold is refused as such, whatever else is wrong.
    check_fits(wanted, memory_limit, memory_in_use())
    budget.check_wanted(wanted, held)
    tensors: dict[str, Any] = {}
    for r in weights:
        data = _pread(fd, r.offset, r.size, r.name)
        tensors.update(safetensors_io.load_bytes(data, f"the folder's {r.name}")[0])
        del data
    arch_config = {k: head[k] for k in HEAD_KEYS if k in head}
    return hf_model.build(cls, config, tensors, arch_config)
