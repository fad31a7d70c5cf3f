"""The API reference (docs/API.md) from the comments in ``proto/p2pagent/v1/*.proto``.

protoc parses the files with their source info (``--include_source_info``), so comments are
attached to what they describe exactly as protoc sees them: the comment above ``package`` is
the file's description, a comment above or after a service method, message, field, enum or
enum value is that element's. Nothing here parses .proto syntax by hand.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2

from p2pagent.transport import authorization

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
#: Public API first, then the types it shares, then the node-to-node service.
FILES = ("agent", "common", "peer")
PACKAGE = "p2pagent.v1"
TITLES = {
    "agent": "Agent: the public API",
    "common": "Shared types",
    "peer": "Peer: node to node (node certificates only)",
}

# Field numbers of descriptor.proto, the path elements of SourceCodeInfo locations.
_PACKAGE, _MESSAGE, _ENUM, _SERVICE = 2, 4, 5, 6
_M_FIELD, _M_NESTED, _M_ENUM = 2, 3, 4
_S_METHOD, _E_VALUE = 2, 2

Comments = dict[tuple[int, ...], str]
#: A lint rule waived on one element, and the reason (a sentence that may run over several
#: lines); listed under Conventions, left out of the element's description.
_IGNORE = "buf:lint:ignore "
_WHY = "Lint exception: "


def _lint_parts(comment: str) -> tuple[list[str], list[str], list[str]]:
    """(description lines, rules waived, reason lines) of one comment."""
    text, rules, why = [], [], []
    in_why = False
    for raw in comment.strip().splitlines():
        line = raw.strip()
        if line.startswith(_IGNORE):
            rules.append(line.removeprefix(_IGNORE).split()[0])
        elif line.startswith(_WHY) or in_why:
            why.append(line.removeprefix(_WHY))
            in_why = not line.endswith(".")
        elif line:
            text.append(line)
    return text, rules, why


def _description(comment: str) -> list[str]:
    return _lint_parts(comment)[0]


def _descriptors() -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
        ] + [str(PROTO_DIR / "p2pagent" / "v1" / f"{name}.proto") for name in FILES]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see its message above")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
        return fds


def _comments(f: descriptor_pb2.FileDescriptorProto) -> Comments:
    out: Comments = {}
    for loc in f.source_code_info.location:
        text = " ".join(
            line
            for part in (loc.leading_comments, loc.trailing_comments)
            for line in _description(part)
        )
        if text:
            out[tuple(loc.path)] = text
    return out


def _element(f: descriptor_pb2.FileDescriptorProto, path: tuple[int, ...]) -> str:
    """The name of the element at a source path (services, RPCs, messages, enums)."""
    if path[:1] == (_SERVICE,) and len(path) >= 2:
        svc = f.service[path[1]]
        if len(path) >= 4 and path[2] == _S_METHOD:
            return f"{svc.name}.{svc.method[path[3]].name}"
        return svc.name
    if path[:1] == (_MESSAGE,) and len(path) >= 2:
        return f.message_type[path[1]].name
    if path[:1] == (_ENUM,) and len(path) >= 2:
        return f.enum_type[path[1]].name
    return Path(f.name).name


def _lint_exceptions(files: list[descriptor_pb2.FileDescriptorProto]) -> Iterator[str]:
    """A table of the ``buf:lint:ignore RULE reason`` comments: what is waived where, and why."""
    # Elements waived alike, for the same reason, share one row.
    rows: dict[tuple[str, str], list[str]] = {}
    for f in files:
        for loc in f.source_code_info.location:
            _, rules, reason = _lint_parts(loc.leading_comments)
            if rules:
                key = (", ".join(f"`{r}`" for r in rules), " ".join(reason))
                rows.setdefault(key, []).append(f"`{_element(f, tuple(loc.path))}`")
    if not rows:
        yield "None: every rule holds everywhere."
        return
    yield "| elements | rules waived | why |"
    yield "|---|---|---|"
    for (waived, because), elements in rows.items():
        yield f"| {', '.join(elements)} | {waived} | {_cell(because) or 'not given'} |"


def _short(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def _qualified(type_name: str) -> str:
    """``.p2pagent.v1.TaskEvent.Kind`` -> ``TaskEvent.Kind``."""
    return type_name.removeprefix(".").removeprefix(PACKAGE + ".")


def _anchor(qualified: str) -> str:
    # An explicit anchor: heading-derived ones differ between renderers.
    return f'<a id="{qualified.lower().replace(".", "-")}"></a>'


def _link(type_name: str) -> str:
    q = _qualified(type_name)
    return f"[`{q}`](#{q.lower().replace('.', '-')})"


def _type(fld: descriptor_pb2.FieldDescriptorProto, maps: dict[str, str]) -> str:
    if fld.type_name and fld.type_name in maps:
        return maps[fld.type_name]
    if fld.type_name:
        kind = _link(fld.type_name)
    else:
        kind = "`" + descriptor_pb2.FieldDescriptorProto.Type.Name(fld.type)[5:].lower() + "`"
    if fld.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {kind}"
    return kind


def _text(text: str) -> str:
    """Comment text safe in markdown: ``<name>`` stays visible instead of vanishing as HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|")


def _service(
    svc: descriptor_pb2.ServiceDescriptorProto, path: tuple[int, ...], notes: Comments
) -> Iterator[str]:
    yield f"### service `{svc.name}`"
    yield ""
    if path in notes:
        yield _text(notes[path])
        yield ""
    yield "| method | request | response | description |"
    yield "|---|---|---|---|"
    for i, m in enumerate(svc.method):
        req = ("stream " if m.client_streaming else "") + _link(m.input_type)
        resp = ("stream " if m.server_streaming else "") + _link(m.output_type)
        note = _cell(notes.get((*path, _S_METHOD, i), ""))
        yield f"| `{m.name}` | {req} | {resp} | {note} |"
    yield ""


def _enum(
    enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], notes: Comments, prefix: str
) -> Iterator[str]:
    yield f"{_anchor(prefix + enum.name)}"
    yield f"#### enum `{prefix}{enum.name}`"
    yield ""
    if path in notes:
        yield _text(notes[path])
        yield ""
    yield "| value | number | description |"
    yield "|---|---:|---|"
    for i, v in enumerate(enum.value):
        yield f"| `{v.name}` | {v.number} | {_cell(notes.get((*path, _E_VALUE, i), ''))} |"
    yield ""


def _message(
    msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], notes: Comments, prefix: str = ""
) -> Iterator[str]:
    maps = {
        f".{PACKAGE}.{prefix}{msg.name}.{n.name}": _map_type(n)
        for n in msg.nested_type
        if n.options.map_entry
    }
    yield f"{_anchor(prefix + msg.name)}"
    yield f"#### `{prefix}{msg.name}`"
    yield ""
    if path in notes:
        yield _text(notes[path])
        yield ""
    if msg.field:
        yield "| field | type | number | description |"
        yield "|---|---|---:|---|"
        for i, fld in enumerate(msg.field):
            note = _cell(notes.get((*path, _M_FIELD, i), ""))
            yield f"| `{fld.name}` | {_type(fld, maps)} | {fld.number} | {note} |"
        yield ""
    else:
        yield "No fields."
        yield ""
    for i, e in enumerate(msg.enum_type):
        yield from _enum(e, (*path, _M_ENUM, i), notes, f"{prefix}{msg.name}.")
    for i, n in enumerate(msg.nested_type):
        if not n.options.map_entry:
            yield from _message(n, (*path, _M_NESTED, i), notes, f"{prefix}{msg.name}.")


def _map_type(entry: descriptor_pb2.DescriptorProto) -> str:
    key, value = entry.field[0], entry.field[1]
    names = [
        _qualified(f.type_name)
        if f.type_name
        else descriptor_pb2.FieldDescriptorProto.Type.Name(f.type)[5:].lower()
        for f in (key, value)
    ]
    return f"`map<{names[0]}, {names[1]}>`"


def render() -> str:
    """The markdown of docs/API.md."""
    out = [
        "# API reference",
        "",
        "<!-- Generated from proto/p2pagent/v1/*.proto by `make docs`; edit the .proto",
        "     comments, not this file. tests/unit/test_docs_fresh.py checks it is fresh. -->",
        "",
        "Package `p2pagent.v1`. Every node serves both services over mutual TLS, plus the",
        "standard `grpc.health.v1.Health` and server reflection (`grpc.reflection.v1` and",
        "`v1alpha`), so stock tools (grpcurl, grpc_health_probe) work with a client",
        "certificate. Errors are gRPC status codes with a message that names the problem",
        "(docs/operations.md says which code means what).",
        "",
        "## Conventions",
        "",
        "The protos follow [buf's STANDARD lint rules](https://buf.build/docs/lint/rules/)",
        "(`proto/buf.yaml`): each service's name ends in `Service`; each RPC has its own",
        "`<Rpc>Request` and `<Rpc>Response` (types shared between RPCs are fields of them);",
        "enum values carry their enum's name as a prefix and the zero value is",
        "`<ENUM>_UNSPECIFIED`. Check with `cd proto && buf lint`; without buf,",
        "`python -m p2pagent._proto.lint` checks the same rules (tests/unit/test_proto_lint.py",
        "runs whichever is installed). Deliberate exceptions, each a `buf:lint:ignore` comment",
        "in the .proto with its reason:",
        "",
        "@@LINT_EXCEPTIONS@@",
        "",
        "## Who may call what",
        "",
        "Each certificate carries one role: `client`, `publisher`, `admin` or `node`. The",
        "guard checks every call against this table (`p2pagent/transport/authorization.py`);",
        "a caller whose role is not listed gets PERMISSION_DENIED naming the role needed.",
        "",
        authorization.render(),
    ]
    files = list(_descriptors().file)
    at = out.index("@@LINT_EXCEPTIONS@@")
    out[at : at + 1] = _lint_exceptions(files)
    by_name = {Path(f.name).stem: f for f in files}
    for stem in FILES:
        f = by_name[stem]
        notes = _comments(f)
        out += [f"## {TITLES[stem]} (`{f.name}`)", ""]
        if (_PACKAGE,) in notes:
            out += [_text(notes[(_PACKAGE,)]), ""]
        for i, svc in enumerate(f.service):
            out += _service(svc, (_SERVICE, i), notes)
        if f.message_type or f.enum_type:
            out += ["### messages", ""]
        for i, e in enumerate(f.enum_type):
            out += _enum(e, (_ENUM, i), notes, "")
        for i, m in enumerate(f.message_type):
            out += _message(m, (_MESSAGE, i), notes)
    return "\n".join(out).rstrip() + "\n"
