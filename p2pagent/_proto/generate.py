"""Regenerates the protobuf and gRPC stubs in this folder from ``proto/``.

Run ``make proto`` (or ``python -m p2pagent._proto.generate``). The stubs are committed;
``tests/unit/test_proto_fresh.py`` fails when they no longer match the ``.proto`` files.

protoc names imports after the proto package path (``p2pagent.v1``); we rewrite them to
this package so the stubs import each other as ``p2pagent._proto.X_pb2``.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent
PROTOS = ("common", "peer", "agent")
_IMPORT = re.compile(r"^from p2pagent\.v1 import (\w+) as", re.MULTILINE)


def _plugin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extras (make venv)")
    return found


def render() -> dict[str, str]:
    """Returns {file name: text} of every generated stub."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            # Typed gRPC stubs (.pyi) from mypy-protobuf, so mypy --strict sees servicers.
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_grpc_out={tmp}",
        ] + [str(PROTO_DIR / "p2pagent" / "v1" / f"{name}.proto") for name in PROTOS]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see its message above")
        out: dict[str, str] = {}
        for path in sorted((Path(tmp) / "p2pagent" / "v1").iterdir()):
            text = path.read_text()
            text = _IMPORT.sub(r"from p2pagent._proto import \1 as", text)
            text = text.replace("from p2pagent.v1 import ", "from p2pagent._proto import ")
            out[path.name] = text
        return out


def main() -> int:
    for name, text in render().items():
        (OUT_DIR / name).write_text(text)
    print(f"wrote stubs for {', '.join(PROTOS)} to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
