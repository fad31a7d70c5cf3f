"""Model files a node serves straight from disk (``--serve NAME=PATH``), beside the ones it
gets through the replicated model registry. Handy for a single host and for the demo.

The metadata (inputs, outputs, and the architecture for safetensors weights) comes from
``NAME=PATH@METADATA.json``, or else from a sibling ``<stem>.metadata.json`` where ``<stem>``
is the file name up to its first dot (``demo.torchscript.pt`` -> ``demo.metadata.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p2pagent.errors import ConfigError, InvalidArgument
from p2pagent.identity.spiffe import check_name
from p2pagent.inference.spec import ModelSpec


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    spec: ModelSpec


def parse_serve(entry: str) -> LocalModel:
    if "=" not in entry:
        raise ConfigError(f"--serve {entry!r} must look like NAME=PATH[@METADATA.json]")
    name, rest = entry.split("=", 1)
    try:
        check_name(name, "model name")
    except InvalidArgument as e:
        raise ConfigError(f"--serve {entry!r}: {e}") from None
    path_text, _, meta_text = rest.partition("@")
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"--serve {name}: model file {path} does not exist")
    meta = (
        Path(meta_text) if meta_text else path.with_name(path.name.split(".")[0] + ".metadata.json")
    )
    try:
        spec = ModelSpec.from_json(meta.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"--serve {name}: metadata {meta} does not exist (give NAME=PATH@METADATA.json)"
        ) from None
    except InvalidArgument as e:
        raise ConfigError(f"--serve {name}: metadata {meta}: {e}") from None
    return LocalModel(name, path, spec)
