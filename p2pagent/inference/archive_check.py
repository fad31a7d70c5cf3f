"""What is inside a model archive, read without running any of it: no pickle from the network
is ever unpickled.

Nodes call ``check_archive`` on every upload before it is published (and the checking child
refuses anything it fails), so a model that would make a loader unpickle a caller's objects
never reaches a loader. Pickle streams are only *parsed* here (``pickletools.genops`` reads
opcodes, it never builds objects), and every global a stream names must be one we allow.

- ``torchscript``: ``data.pkl``, ``constants.pkl`` and the ``*.debug_pkl`` files are pickles
  by design. ``torch.jit.load`` reads them with its own C++ unpickler, which resolves only
  TorchScript types and a few tensor rebuild functions (an experiment with a planted
  ``os.system`` REDUCE ends in "Unknown type name 'posix.system'", nothing runs). We still
  refuse any global outside ``torch``/``__torch__``/``collections.OrderedDict``, so such a
  file is refused at publish with a message instead of failing on every node later.
- ``export`` (``.pt2``): weights and constants are raw tensor bytes described by JSON
  configs, except where a config says ``use_pickle`` (torch's loader then
  unpickles it unrestricted), or a constant is a custom or opaque object (``pickle.loads``): all
  refused. The sample inputs are a ``torch.save`` archive that torch's loader reads with
  ``weights_only=True`` but retries with ``weights_only=False`` when that fails: its pickles
  may name only tensor-rebuild globals (and ``loading`` forces ``weights_only`` process-wide
  as well). Any entry of another kind (legacy pickled state, AOTInductor libraries) is
  refused.
- ``safetensors``: JSON and bytes, read by our own parser; nothing to unpickle.

Cost: reads the zip directory, the JSON configs and the pickle streams (each at most
``MAX_PICKLE_BYTES``), never the weights.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from collections import Counter
from pathlib import Path
from typing import IO, Any

from p2pagent.errors import InvalidArgument
from p2pagent.inference.formats import ModelFormat

#: Largest pickle stream read for checking (a TorchScript ``data.pkl`` is kilobytes: tensor
#: data lives beside it).
MAX_PICKLE_BYTES = 64 << 20
#: Largest JSON config of a .pt2 archive read for checking.
MAX_CONFIG_BYTES = 64 << 20

#: Globals ``torch.jit.load``'s unpickler may meet (module prefix, or exact "module name").
_TORCHSCRIPT_MODULES = ("torch", "__torch__")
_TORCHSCRIPT_GLOBALS = frozenset({"collections OrderedDict"})
#: Globals a tensor-only ``torch.save`` pickle names (what ``weights_only`` accepts anyway).
_TENSOR_GLOBALS = frozenset(
    {
        "collections OrderedDict",
        "torch._utils _rebuild_tensor_v2",
        "torch._utils _rebuild_parameter",
        "torch._tensor _rebuild_from_type_v2",
        "torch device",
        "torch Size",
    }
)
_STORAGE_SUFFIX = "Storage"

#: Pickle opcodes that name a global directly (argument "module name").
_NAMED_GLOBALS = {"GLOBAL", "INST"}
#: Opcodes that only store to or read the memo; skipped when looking back from STACK_GLOBAL.
_MEMO_OPS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
#: Globals from the copyreg extension registry: unnamed, so refused.
_EXTENSION_OPS = {"EXT1", "EXT2", "EXT4"}


def check_archive(path: Path | IO[bytes], fmt: ModelFormat) -> None:
    """Refuses (InvalidArgument, naming the entry) a model file whose loading would unpickle
    anything but tensors and TorchScript types."""
    if fmt in (ModelFormat.SAFETENSORS, ModelFormat.HF_FOLDER):
        return  # no pickle: our own JSON-and-bytes parsers
    try:
        with zipfile.ZipFile(path) as z:
            _check_unique(z, "the archive")
            if fmt is ModelFormat.TORCHSCRIPT:
                _check_torchscript(z)
            else:
                _check_export(z)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InvalidArgument(f"the model file is a damaged zip archive: {e}") from None


def pickle_globals(data: bytes, what: str) -> list[str]:
    """The globals a pickle stream names ("module name"), by parsing its opcodes only.

    InvalidArgument for a stream that does not parse, or whose globals cannot be read
    statically (STACK_GLOBAL from the memo, extension codes)."""
    found: list[str] = []
    recent: list[tuple[str, Any]] = []
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in _NAMED_GLOBALS:
                found.append(str(arg))
            elif name == "STACK_GLOBAL":
                strings = [a for n, a in recent[-2:] if n in _STRING_OPS]
                if len(strings) != 2:
                    raise InvalidArgument(
                        f"{what} names a global this check cannot read (STACK_GLOBAL not "
                        "after two string literals); refused"
                    )
                found.append(f"{strings[0]} {strings[1]}")
            elif name in _EXTENSION_OPS:
                raise InvalidArgument(f"{what} names a global by extension code; refused")
            if name not in _MEMO_OPS:
                recent.append((name, arg))
                del recent[:-2]
    except ValueError as e:
        raise InvalidArgument(f"{what} is not a readable pickle stream: {e}") from None
    return found


# ---- torchscript -------------------------------------------------------------------------------


def _torchscript_global_ok(glob: str) -> bool:
    module = glob.split(" ", 1)[0]
    top = module.split(".", 1)[0]
    return top in _TORCHSCRIPT_MODULES or glob in _TORCHSCRIPT_GLOBALS


def _check_torchscript(z: zipfile.ZipFile) -> None:
    for info in z.infolist():
        if info.filename.endswith((".pkl", ".debug_pkl")):
            what = f"torchscript entry {info.filename!r}"
            for glob in pickle_globals(_read(z, info, MAX_PICKLE_BYTES, what), what):
                if not _torchscript_global_ok(glob):
                    raise InvalidArgument(
                        f"{what} is a pickle that names {glob!r}, which is not a TorchScript "
                        "type: refused (a model file may not carry Python objects). Save the "
                        "model with torch.jit.save from a scripted or traced module"
                    )


# ---- torch.export ------------------------------------------------------------------------------

_EXPORT_FIXED = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
_WEIGHTS_DIR = "data/weights/"
_CONSTANTS_DIR = "data/constants/"
_SAMPLE_INPUTS_DIR = "data/sample_inputs/"
_TENSOR_CONSTANT_PREFIX = "tensor_"


def _check_export(z: zipfile.ZipFile) -> None:
    infos = z.infolist()
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if len(roots) != 1:
        raise InvalidArgument(
            f"the .pt2 archive has {len(roots)} top-level folders; torch.export.save writes one"
        )
    root = roots.pop() + "/"
    entries = {i.filename[len(root) :]: i for i in infos if not i.filename.endswith("/")}
    fmt = entries.get("archive_format")
    if fmt is None or _read(z, fmt, 16, "archive_format").strip() != b"pt2":
        raise InvalidArgument(
            "the .pt2 archive is not in the pt2 archive format of torch.export.save (older "
            "formats keep their state as pickles): export and save it again with torch >= 2.7"
        )
    tensors: set[str] = set()
    for rel, info in entries.items():
        if rel.startswith((_WEIGHTS_DIR, _CONSTANTS_DIR)) and rel.endswith("_config.json"):
            tensors |= _payload_files(z, info, rel)
    for rel, info in entries.items():
        if rel in _EXPORT_FIXED or rel in tensors:
            continue
        if rel.startswith("models/") and rel.endswith(".json"):
            continue
        if rel.startswith("extra/"):  # torch.export.save's extra_files: read as text only
            continue
        if rel.startswith((_WEIGHTS_DIR, _CONSTANTS_DIR)) and rel.endswith("_config.json"):
            continue
        if rel.startswith(_SAMPLE_INPUTS_DIR) and rel.endswith(".pt"):
            _check_tensor_archive(z, info, rel)
            continue
        raise InvalidArgument(
            f"the .pt2 archive holds {rel!r}, which is not part of a torch.export program "
            "this node loads (weights and constants must be raw tensors named by their "
            "config; no pickled state, no compiled libraries): refused"
        )


def _payload_files(z: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str) -> set[str]:
    """The raw tensor files a weights/constants config names; refuses pickled payloads."""
    try:
        doc = json.loads(_read(z, info, MAX_CONFIG_BYTES, rel))
        config = doc["config"]
        if not isinstance(config, dict):
            raise TypeError("'config' is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidArgument(f"the .pt2 archive's {rel!r} is not a payload config: {e}") from None
    folder = rel.rsplit("/", 1)[0] + "/"
    out = set()
    for fqn, meta in config.items():
        label = f"{'weight' if folder == _WEIGHTS_DIR else 'constant'} {str(fqn)[:80]!r}"
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise InvalidArgument(f"the .pt2 archive's {rel!r}: {label} has no path_name")
        if meta.get("use_pickle", False) is not False:
            raise InvalidArgument(
                f"the .pt2 archive stores {label} with pickle, which this node never loads: "
                "refused. Make it a plain dense tensor (no tensor subclass) and export again"
            )
        path_name = meta["path_name"]
        if folder == _CONSTANTS_DIR and not path_name.startswith(_TENSOR_CONSTANT_PREFIX):
            raise InvalidArgument(
                f"the .pt2 archive's {label} is a Python or script object ({path_name!r}), "
                "stored with pickle: refused; only tensor constants are accepted"
            )
        out.add(folder + path_name)
    return out


def _check_tensor_archive(z: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str) -> None:
    """A nested ``torch.save`` archive (sample inputs): tensors only."""
    data = _read(z, info, MAX_PICKLE_BYTES, rel)
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InvalidArgument(
            f"the .pt2 archive's {rel!r} is not a torch.save archive (a bare pickle?): refused"
        ) from None
    with inner:
        _check_unique(inner, rel)
        pickles = [i for i in inner.infolist() if i.filename.endswith(".pkl")]
        if not pickles:
            raise InvalidArgument(f"the .pt2 archive's {rel!r} holds no data.pkl")
        for p in pickles:
            what = f"the .pt2 archive's {rel!r} ({p.filename})"
            for glob in pickle_globals(_read(inner, p, MAX_PICKLE_BYTES, what), what):
                if glob not in _TENSOR_GLOBALS and not (
                    glob.startswith("torch ") and glob.endswith(_STORAGE_SUFFIX)
                ):
                    raise InvalidArgument(
                        f"{what} is a pickle that names {glob!r}: sample inputs may hold only "
                        "tensors; refused"
                    )


# ---- helpers -----------------------------------------------------------------------------------


def _check_unique(z: zipfile.ZipFile, what: str) -> None:
    # Two entries of one name could be read differently by torch's zip reader and ours.
    dup = [n for n, c in Counter(z.namelist()).items() if c > 1]
    if dup:
        raise InvalidArgument(f"{what} holds {dup[0]!r} twice: refused")


def _read(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    if info.file_size > limit:
        raise InvalidArgument(f"{what} is {info.file_size} bytes; at most {limit} are checked")
    f: IO[bytes]
    with z.open(info) as f:
        return f.read(limit + 1)[:limit]
