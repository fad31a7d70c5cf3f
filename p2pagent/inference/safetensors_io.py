"""A small, strict reader and writer of the safetensors format.

Layout: 8-byte little-endian header length N, N bytes of JSON header, then raw tensor data.
The header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the data area) plus an optional ``"__metadata__"`` string map.

Nothing here executes code from the file: it is JSON plus bytes, which is why safetensors is
the one format we may load without trusting its author. Every offset is checked: inside the
data area, exactly ``numel * itemsize`` long, and no two tensors overlapping.
"""

from __future__ import annotations

import itertools
import json
import mmap
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from p2pagent.errors import InvalidArgument
from p2pagent.inference import dtypes
from p2pagent.inference.tensor_checks import check_shape

#: A header bigger than this is refused outright (the reference library uses 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024
_MAX_ELEMENTS = 1 << 40


def save(
    tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        info = dtypes.by_torch(t.dtype, f"tensor {name!r}")
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": info.safetensors,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data area to 8 bytes, as the reference does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def read_header(
    data: bytes | bytearray | memoryview | mmap.mmap, what: str
) -> tuple[dict[str, Any], int]:
    """Returns (header, start of the data area); refuses anything malformed."""
    if len(data) < 8:
        raise InvalidArgument(f"{what} is not a valid safetensors file: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise InvalidArgument(
            f"{what} is not a valid safetensors file: header length {n} is past the end "
            f"of a {len(data)}-byte file"
        )
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(
            f"{what} is not a valid safetensors file: header is not JSON: {e}"
        ) from None
    if not isinstance(header, dict):
        raise InvalidArgument(f"{what} is not a valid safetensors file: header is not an object")
    return header, 8 + n


def load(path: Path, *, mapped: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads every tensor of a safetensors file; returns (tensors, metadata).

    ``mapped``: through a private memory map instead of reading the file whole, so only the
    header and the tensors' bytes are read, each copied out once, and the file is never in
    memory twice. Only for a process nothing else depends on: a file truncated while mapped
    kills its reader (SIGBUS). The publish check's child uses it (``models.publish_check``)."""
    what = f"model file {path}"
    data: bytearray | mmap.mmap
    try:
        if mapped and Path(path).stat().st_size:
            with Path(path).open("rb") as f:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        else:
            data = bytearray(Path(path).read_bytes())
    except OSError as e:
        raise InvalidArgument(f"cannot read {what}: {e}") from None
    return load_bytes(data, what)


def load_bytes(
    data: bytearray | mmap.mmap, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``load`` of a file's bytes already read (the model worker reads its files from
    descriptors); ``what`` names the file in errors."""
    header, start = read_header(data, what)
    size = len(data) - start
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise InvalidArgument(f"{what}: __metadata__ must map strings to strings")
    spans: list[tuple[int, int, str]] = []
    out: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        t_what = f"{what}, tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise InvalidArgument(f"{t_what}: entry needs exactly dtype, shape, data_offsets")
        info = dtypes.BY_SAFETENSORS.get(entry["dtype"])
        if info is None:
            raise InvalidArgument(f"{t_what}: unsupported dtype {entry['dtype']!r}")
        shape_doc, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape_doc, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape_doc
        ):
            raise InvalidArgument(f"{t_what}: shape must be a list of ints")
        shape, count = check_shape(shape_doc, _MAX_ELEMENTS, t_what)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise InvalidArgument(f"{t_what}: data_offsets must be two ints")
        begin, end = offsets
        if not 0 <= begin <= end <= size:
            raise InvalidArgument(
                f"{t_what}: data_offsets {offsets} fall outside the {size}-byte data area"
            )
        if end - begin != count * info.itemsize:
            raise InvalidArgument(
                f"{t_what}: {info.name} shape {list(shape)} needs {count * info.itemsize} "
                f"bytes, data_offsets span {end - begin}"
            )
        spans.append((begin, end, name))
        if count == 0:
            out[name] = torch.empty(shape, dtype=info.torch_dtype)
            continue
        raw = torch.frombuffer(data, dtype=torch.uint8, offset=start + begin, count=end - begin)
        # clone: each tensor owns its memory, so one small tensor does not pin the file.
        out[name] = raw.view(info.torch_dtype).view(shape).clone()
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise InvalidArgument(f"{what}: tensors {a!r} and {b!r} overlap")
    return out, dict(meta)
