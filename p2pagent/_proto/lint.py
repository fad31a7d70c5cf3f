"""buf's STANDARD lint rules, checked in Python for machines without ``buf``.

``proto/buf.yaml`` is the configuration (``version: v2``, ``lint: use: [STANDARD]`` and any
``except``); with buf installed, ``cd proto && buf lint`` is the check and
tests/unit/test_proto_lint.py runs it. Where buf is missing (CI may lack it), the same test runs
this module instead, and where both exist it checks that they agree finding for finding on a
file that breaks every rule, so this copy cannot drift from buf quietly.

protoc parses the files (``--include_source_info``), so every finding points at the line and
column buf would name, with buf's own wording; nothing here parses .proto syntax by hand. The
rules are grouped by what they look at (files and packages, messages and enums, services).
PROTOVALIDATE is not checked: these protos use no protovalidate options. ``buf:lint:ignore RULE``
comments and buf.yaml's ``except``, ``ignore`` and ``ignore_only`` are honoured as buf does.

Run ``python -m p2pagent._proto.lint [proto dir]``: it prints ``file:line:col:message`` per
finding, as buf does, and exits 100 when there is one (buf's code), 0 otherwise.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf import descriptor_pb2

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"

# Field numbers of descriptor.proto: the path elements of SourceCodeInfo locations.
_F_PACKAGE, _F_DEPENDENCY, _F_MESSAGE, _F_ENUM, _F_SERVICE, _F_OPTIONS = 2, 3, 4, 5, 6, 8
_NAME, _FIELD_LABEL, _NUMBER = 1, 4, 2  # a named element's name; a field's label; a value's number
_M_FIELD, _M_NESTED, _M_ENUM, _M_ONEOF = 2, 3, 4, 8
_E_VALUE, _E_OPTIONS, _ALLOW_ALIAS = 2, 3, 2
_S_METHOD, _METHOD_INPUT, _METHOD_OUTPUT = 2, 2, 3

#: The STANDARD category of buf v2 (``buf config ls-lint-rules --version v2``).
STANDARD = (
    "DIRECTORY_SAME_PACKAGE", "PACKAGE_DEFINED", "PACKAGE_DIRECTORY_MATCH",
    "PACKAGE_NO_IMPORT_CYCLE", "PACKAGE_SAME_DIRECTORY", "ENUM_FIRST_VALUE_ZERO",
    "ENUM_NO_ALLOW_ALIAS", "ENUM_PASCAL_CASE", "ENUM_VALUE_UPPER_SNAKE_CASE",
    "FIELD_LOWER_SNAKE_CASE", "FIELD_NOT_REQUIRED", "IMPORT_NO_PUBLIC", "IMPORT_USED",
    "MESSAGE_PASCAL_CASE", "ONEOF_LOWER_SNAKE_CASE", "PACKAGE_LOWER_SNAKE_CASE",
    "PACKAGE_SAME_CSHARP_NAMESPACE", "PACKAGE_SAME_GO_PACKAGE", "PACKAGE_SAME_JAVA_MULTIPLE_FILES",
    "PACKAGE_SAME_JAVA_PACKAGE", "PACKAGE_SAME_PHP_NAMESPACE", "PACKAGE_SAME_RUBY_PACKAGE",
    "PACKAGE_SAME_SWIFT_PREFIX", "RPC_PASCAL_CASE", "SERVICE_PASCAL_CASE", "SYNTAX_SPECIFIED",
    "ENUM_VALUE_PREFIX", "ENUM_ZERO_VALUE_SUFFIX", "FILE_LOWER_SNAKE_CASE",
    "PACKAGE_VERSION_SUFFIX", "PROTOVALIDATE", "RPC_REQUEST_RESPONSE_UNIQUE",
    "RPC_REQUEST_STANDARD_NAME", "RPC_RESPONSE_STANDARD_NAME", "SERVICE_SUFFIX",
)  # fmt: skip

_PASCAL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_LOWER_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
_VERSION = re.compile(
    r"^v[1-9][0-9]*((alpha|beta)[1-9][0-9]*|test.*|p[1-9][0-9]*(alpha|beta)[1-9][0-9]*)?$"
)
_IGNORE = re.compile(r"buf:lint:ignore ([A-Z_]+)")


@dataclass(frozen=True, order=True)
class Finding:
    path: str  # relative to the proto folder, as buf prints it
    line: int  # 1-based, as buf prints it
    column: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}:{self.message}"


def upper_snake(name: str) -> str:
    """buf's ToUpperSnakeCase: "DType" -> "D_TYPE", "ValueType" -> "VALUE_TYPE",
    "HTTPServer" -> "HTTP_SERVER". A capital starts a word when the letter before it is lower
    case, or when the letter after it is neither a capital nor a digit."""
    out = ""
    for i, c in enumerate(name):
        nxt = name[i + 1] if i + 1 < len(name) else ""
        starts = (
            c.isupper()
            and i > 0
            and not out.endswith("_")
            and (
                (nxt != "" and not (nxt.isupper() or nxt.isdigit()) and nxt != "_")
                or name[i - 1].islower()
            )
        )
        out += ("_" + c) if starts else c
    return out.upper()


@dataclass(frozen=True)
class Config:
    use: frozenset[str]
    ignore_only: dict[str, tuple[str, ...]]
    ignore: tuple[str, ...]
    service_suffix: str = "Service"
    enum_zero_value_suffix: str = "_UNSPECIFIED"
    comment_ignores: bool = True

    @classmethod
    def load(cls, proto_dir: Path) -> Config:
        """Reads ``buf.yaml``'s ``lint`` section (the keys this project uses). A category in
        ``use`` other than STANDARD is refused rather than checked half."""
        doc = yaml.safe_load((proto_dir / "buf.yaml").read_text()) or {}
        if doc.get("version") != "v2":
            raise SystemExit(f"{proto_dir / 'buf.yaml'}: expected `version: v2`")
        lint = doc.get("lint") or {}
        use = lint.get("use") or ["STANDARD"]
        rules: set[str] = set()
        for item in use:
            if item == "STANDARD":
                rules.update(STANDARD)
            elif item in STANDARD:
                rules.add(item)
            else:
                raise SystemExit(f"buf.yaml lint.use: {item!r} is not checked by {__name__}")
        unknown = set(lint.get("except") or ()) - set(STANDARD)
        if unknown:
            raise SystemExit(f"buf.yaml lint.except: unknown rules {sorted(unknown)}")
        rules -= set(lint.get("except") or ())
        return cls(
            use=frozenset(rules),
            ignore_only={k: tuple(v) for k, v in (lint.get("ignore_only") or {}).items()},
            ignore=tuple(lint.get("ignore") or ()),
            service_suffix=lint.get("service_suffix", "Service"),
            enum_zero_value_suffix=lint.get("enum_zero_value_suffix", "_UNSPECIFIED"),
            comment_ignores=not lint.get("disallow_comment_ignores", False),
        )


def compile_protos(proto_dir: Path) -> descriptor_pb2.FileDescriptorSet:
    """Every .proto under ``proto_dir``, parsed by protoc with source info."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    files = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["protoc", f"-I{proto_dir}", "--include_source_info", f"--descriptor_set_out={out}"]
        if protoc.main(args + files) != 0:
            raise SystemExit("protoc failed; see its message above")
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
        return fds


class _File:
    """One parsed file with its source locations, for positions and ignore comments."""

    def __init__(self, fd: descriptor_pb2.FileDescriptorProto) -> None:
        self.fd = fd
        self.locations = {tuple(loc.path): loc for loc in fd.source_code_info.location}

    def position(self, path: tuple[int, ...]) -> tuple[int, int]:
        loc = self.locations.get(path)
        if loc is None:
            return 1, 1
        return loc.span[0] + 1, loc.span[1] + 1

    def ignored(self, path: tuple[int, ...], rule: str) -> bool:
        """A ``buf:lint:ignore RULE`` comment on the element (buf reads the comment of the
        element a finding is about: the RPC for its request type, the field for its name)."""
        for n in (len(path), len(path) - 1):
            loc = self.locations.get(path[:n])
            if loc is None:
                continue
            text = " ".join([loc.leading_comments, *loc.leading_detached_comments])
            if rule in _IGNORE.findall(text):
                return True
        return False


#: buf's message per rule, word for word (``SAME_TYPE`` is RPC_REQUEST_RESPONSE_UNIQUE's second).
MESSAGES = {
    "FILE_LOWER_SNAKE_CASE":
        'Filename "{file}" should be lower_snake_case.proto, such as "{want}.proto".',
    "SYNTAX_SPECIFIED": "Files must have a syntax explicitly specified. If no syntax is "
        'specified, the file defaults to "proto2".',
    "PACKAGE_DEFINED": "Files must have a package defined.",
    "PACKAGE_LOWER_SNAKE_CASE":
        'Package name "{name}" should be lower_snake.case, such as "{want}".',
    "PACKAGE_VERSION_SUFFIX": 'Package name "{name}" should be suffixed with a correctly '
        'formed version, such as "{name}.v1".',
    "PACKAGE_DIRECTORY_MATCH": 'Files with package "{name}" must be within a directory '
        '"{want}" relative to root but were in directory "{got}".',
    "IMPORT_NO_PUBLIC": 'Import "{name}" must not be public.',
    "IMPORT_USED": 'Import "{name}" is unused.',
    "DIRECTORY_SAME_PACKAGE": 'Multiple packages "{names}" detected within directory "{dir}".',
    "PACKAGE_SAME_DIRECTORY":
        'Multiple directories "{dirs}" contain files with package "{name}".',
    "PACKAGE_SAME_OPTION": 'Files in package "{name}" have multiple values "{values}" for '
        'option "{option}" and all values must be equal.',
    "PACKAGE_NO_IMPORT_CYCLE": 'Package import cycle involving "{name}".',
    "MESSAGE_PASCAL_CASE": 'Message name "{name}" should be PascalCase, such as "{want}".',
    "FIELD_LOWER_SNAKE_CASE":
        'Field name "{name}" should be lower_snake_case, such as "{want}".',
    "FIELD_NOT_REQUIRED": "Field named {name} should not be required.",
    "ONEOF_LOWER_SNAKE_CASE":
        'Oneof name "{name}" should be lower_snake_case, such as "{want}".',
    "ENUM_PASCAL_CASE": 'Enum name "{name}" should be PascalCase, such as "{want}".',
    "ENUM_NO_ALLOW_ALIAS": 'Enum option "allow_alias" on enum "{name}" must be false.',
    "ENUM_FIRST_VALUE_ZERO": 'First enum value "{name}" should have a numeric value of 0',
    "ENUM_VALUE_UPPER_SNAKE_CASE":
        'Enum value name "{name}" should be UPPER_SNAKE_CASE, such as "{want}".',
    "ENUM_VALUE_PREFIX": 'Enum value name "{name}" should be prefixed with "{want}".',
    "ENUM_ZERO_VALUE_SUFFIX": 'Enum zero value name "{name}" should be suffixed with "{want}".',
    "SERVICE_PASCAL_CASE": 'Service name "{name}" should be PascalCase, such as "{want}".',
    "SERVICE_SUFFIX": 'Service name "{name}" should be suffixed with "{want}".',
    "RPC_PASCAL_CASE": 'RPC name "{name}" should be PascalCase, such as "{want}".',
    "RPC_REQUEST_STANDARD_NAME":
        'RPC request type "{name}" should be named "{want}" or "{service_want}".',
    "RPC_RESPONSE_STANDARD_NAME":
        'RPC response type "{name}" should be named "{want}" or "{service_want}".',
    "RPC_REQUEST_RESPONSE_UNIQUE":
        '"{name}" is used as the request or response type for multiple RPCs.',
    "SAME_TYPE": 'RPC "{name}" has the same type "{type}" for the request and response.',
}  # fmt: skip

#: The PACKAGE_SAME_* rules: every file of a package sets the option alike.
_SAME_OPTION = {
    "PACKAGE_SAME_CSHARP_NAMESPACE": "csharp_namespace",
    "PACKAGE_SAME_GO_PACKAGE": "go_package",
    "PACKAGE_SAME_JAVA_MULTIPLE_FILES": "java_multiple_files",
    "PACKAGE_SAME_JAVA_PACKAGE": "java_package",
    "PACKAGE_SAME_PHP_NAMESPACE": "php_namespace",
    "PACKAGE_SAME_RUBY_PACKAGE": "ruby_package",
    "PACKAGE_SAME_SWIFT_PREFIX": "swift_prefix",
}

Path_ = tuple[int, ...]


class _Checker:
    def __init__(self, fds: descriptor_pb2.FileDescriptorSet, config: Config) -> None:
        self.files = [_File(fd) for fd in fds.file]
        self.config = config
        self.found: list[Finding] = []

    def add(self, f: _File, rule: str, path: Path_, template: str = "", **fields: object) -> None:
        """Records a finding unless buf.yaml or a ``buf:lint:ignore`` comment waives it."""
        if rule not in self.config.use:
            return
        name = f.fd.name
        if _under(name, self.config.ignore) or _under(name, self.config.ignore_only.get(rule, ())):
            return
        if self.config.comment_ignores and f.ignored(path, rule):
            return
        line, col = f.position(path)
        message = MESSAGES[template or rule].format(**fields)
        self.found.append(Finding(name, line, col, rule, message))

    def run(self) -> list[Finding]:
        self._packages()
        for f in self.files:
            self._file(f)
            for i, m in enumerate(f.fd.message_type):
                self._message(f, m, (_F_MESSAGE, i))
            for i, e in enumerate(f.fd.enum_type):
                self._enum(f, e, (_F_ENUM, i))
            for i, s in enumerate(f.fd.service):
                self._service(f, s, (_F_SERVICE, i))
        self._rpc_unique()
        return sorted(set(self.found))

    # Files and packages.

    def _file(self, f: _File) -> None:
        fd = f.fd
        stem = Path(fd.name).stem
        if not _LOWER_SNAKE.match(stem):
            want = upper_snake(stem).lower()
            self.add(f, "FILE_LOWER_SNAKE_CASE", (), file=Path(fd.name).name, want=want)
        if not fd.syntax and not fd.edition:
            self.add(f, "SYNTAX_SPECIFIED", ())
        if not fd.package:
            self.add(f, "PACKAGE_DEFINED", ())
            return
        pkg = (_F_PACKAGE,)
        if not all(_LOWER_SNAKE.match(part) for part in fd.package.split(".")):
            self.add(f, "PACKAGE_LOWER_SNAKE_CASE", pkg, name=fd.package, want=fd.package.lower())
        if not _VERSION.match(fd.package.split(".")[-1]):
            self.add(f, "PACKAGE_VERSION_SUFFIX", pkg, name=fd.package)
        want, got = fd.package.replace(".", "/"), str(Path(fd.name).parent)
        if got != want:
            self.add(f, "PACKAGE_DIRECTORY_MATCH", pkg, name=fd.package, want=want, got=got)
        for i in fd.public_dependency:
            self.add(f, "IMPORT_NO_PUBLIC", (_F_DEPENDENCY, i), name=fd.dependency[i])
        used = {t.lstrip(".") for t in _referenced_types(fd)}
        defined = {other.fd.name: _defined_types(other.fd) for other in self.files}
        for i, dep in enumerate(fd.dependency):
            if dep in defined and not (used & defined[dep]):
                self.add(f, "IMPORT_USED", (_F_DEPENDENCY, i), name=dep)

    def _packages(self) -> None:
        by_dir: dict[str, set[str]] = {}
        by_pkg: dict[str, set[str]] = {}
        for f in self.files:
            d = str(Path(f.fd.name).parent)
            by_dir.setdefault(d, set()).add(f.fd.package)
            by_pkg.setdefault(f.fd.package, set()).add(d)
        for f in self.files:
            d, pkg = str(Path(f.fd.name).parent), f.fd.package
            if len(by_dir[d]) > 1:
                names = ",".join(sorted(by_dir[d]))
                self.add(f, "DIRECTORY_SAME_PACKAGE", (_F_PACKAGE,), names=names, dir=d)
            if pkg and len(by_pkg[pkg]) > 1:
                dirs = ",".join(sorted(by_pkg[pkg]))
                self.add(f, "PACKAGE_SAME_DIRECTORY", (_F_PACKAGE,), dirs=dirs, name=pkg)
        for rule, option in _SAME_OPTION.items():
            for pkg in by_pkg:
                files = [f for f in self.files if f.fd.package == pkg]
                values = sorted({_option(f.fd, option) for f in files})
                if len(values) < 2:
                    continue
                shown = ",".join(v for v in values if v)
                for f in files:
                    self.add(
                        f, rule, (_F_OPTIONS,), "PACKAGE_SAME_OPTION",
                        name=pkg, values=shown, option=option,
                    )  # fmt: skip
        # Imports between packages of this tree: a package that reaches itself is a cycle.
        graph: dict[str, set[str]] = {}
        pkg_of = {f.fd.name: f.fd.package for f in self.files}
        for f in self.files:
            for dep in f.fd.dependency:
                other = pkg_of.get(dep)
                if other is not None and other != f.fd.package:
                    graph.setdefault(f.fd.package, set()).add(other)
        for f in self.files:
            if _reaches(graph, f.fd.package, f.fd.package):
                self.add(f, "PACKAGE_NO_IMPORT_CYCLE", (_F_PACKAGE,), name=f.fd.package)

    # Messages, fields and enums.

    def _message(self, f: _File, m: descriptor_pb2.DescriptorProto, path: Path_) -> None:
        if m.options.map_entry:
            return
        if not _PASCAL.match(m.name):
            self.add(f, "MESSAGE_PASCAL_CASE", (*path, _NAME), name=m.name, want=_pascal(m.name))
        for i, fld in enumerate(m.field):
            fpath = (*path, _M_FIELD, i)
            if not _LOWER_SNAKE.match(fld.name):
                want = upper_snake(fld.name).lower()
                self.add(f, "FIELD_LOWER_SNAKE_CASE", (*fpath, _NAME), name=fld.name, want=want)
            if fld.label == descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED:
                self.add(f, "FIELD_NOT_REQUIRED", (*fpath, _FIELD_LABEL), name=fld.name)
        # proto3 `optional` makes a oneof of its own that buf does not name-check.
        synthetic = {fld.oneof_index for fld in m.field if fld.proto3_optional}
        for i, oneof in enumerate(m.oneof_decl):
            if i not in synthetic and not _LOWER_SNAKE.match(oneof.name):
                want = upper_snake(oneof.name).lower()
                opath = (*path, _M_ONEOF, i, _NAME)
                self.add(f, "ONEOF_LOWER_SNAKE_CASE", opath, name=oneof.name, want=want)
        for i, nested in enumerate(m.nested_type):
            self._message(f, nested, (*path, _M_NESTED, i))
        for i, e in enumerate(m.enum_type):
            self._enum(f, e, (*path, _M_ENUM, i))

    def _enum(self, f: _File, e: descriptor_pb2.EnumDescriptorProto, path: Path_) -> None:
        if not _PASCAL.match(e.name):
            self.add(f, "ENUM_PASCAL_CASE", (*path, _NAME), name=e.name, want=_pascal(e.name))
        if e.options.allow_alias:
            self.add(f, "ENUM_NO_ALLOW_ALIAS", (*path, _E_OPTIONS, _ALLOW_ALIAS), name=e.name)
        prefix = upper_snake(e.name) + "_"
        suffix = self.config.enum_zero_value_suffix
        for i, v in enumerate(e.value):
            vpath = (*path, _E_VALUE, i, _NAME)
            if i == 0 and v.number != 0:
                self.add(f, "ENUM_FIRST_VALUE_ZERO", (*path, _E_VALUE, i, _NUMBER), name=v.name)
            if not _UPPER_SNAKE.match(v.name):
                want = upper_snake(v.name)
                self.add(f, "ENUM_VALUE_UPPER_SNAKE_CASE", vpath, name=v.name, want=want)
            if not v.name.startswith(prefix):
                self.add(f, "ENUM_VALUE_PREFIX", vpath, name=v.name, want=prefix)
            if v.number == 0 and not v.name.endswith(suffix):
                self.add(f, "ENUM_ZERO_VALUE_SUFFIX", vpath, name=v.name, want=suffix)

    # Services and RPCs.

    def _service(self, f: _File, s: descriptor_pb2.ServiceDescriptorProto, path: Path_) -> None:
        if not _PASCAL.match(s.name):
            self.add(f, "SERVICE_PASCAL_CASE", (*path, _NAME), name=s.name, want=_pascal(s.name))
        suffix = self.config.service_suffix
        if not s.name.endswith(suffix):
            self.add(f, "SERVICE_SUFFIX", (*path, _NAME), name=s.name, want=suffix)
        for i, rpc in enumerate(s.method):
            mpath = (*path, _S_METHOD, i)
            rpc_name = _pascal(rpc.name)
            if rpc.name != rpc_name or not _PASCAL.match(rpc.name):
                self.add(f, "RPC_PASCAL_CASE", (*mpath, _NAME), name=rpc.name, want=rpc_name)
            for kind, field, type_name in (
                ("Request", _METHOD_INPUT, rpc.input_type),
                ("Response", _METHOD_OUTPUT, rpc.output_type),
            ):
                short = type_name.rsplit(".", 1)[-1]
                want, service_want = f"{rpc_name}{kind}", f"{s.name}{rpc_name}{kind}"
                if short not in (want, service_want):
                    rule = f"RPC_{kind.upper()}_STANDARD_NAME"
                    self.add(
                        f, rule, (*mpath, field), name=short, want=want, service_want=service_want
                    )

    def _rpc_unique(self) -> None:
        uses: Counter[str] = Counter()
        for f in self.files:
            for s in f.fd.service:
                for rpc in s.method:
                    uses.update({rpc.input_type, rpc.output_type})
        rule = "RPC_REQUEST_RESPONSE_UNIQUE"
        for f in self.files:
            for si, s in enumerate(f.fd.service):
                for mi, rpc in enumerate(s.method):
                    path = (_F_SERVICE, si, _S_METHOD, mi)
                    for type_name in dict.fromkeys((rpc.input_type, rpc.output_type)):
                        if uses[type_name] > 1:
                            self.add(f, rule, path, name=type_name.lstrip("."))
                    if rpc.input_type == rpc.output_type:
                        self.add(
                            f, rule, path, "SAME_TYPE", name=rpc.name,
                            type=rpc.input_type.lstrip("."),
                        )  # fmt: skip


def _under(name: str, paths: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p.rstrip("/") + "/") for p in paths)


def _option(fd: descriptor_pb2.FileDescriptorProto, option: str) -> str:
    """A file option's value as buf compares it; "" where the file does not set it."""
    return str(getattr(fd.options, option)) if fd.options.HasField(option) else ""


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_.]", name) if part)


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def _defined_types(fd: descriptor_pb2.FileDescriptorProto) -> set[str]:
    prefix = fd.package + "." if fd.package else ""

    def walk(msgs: Iterable[descriptor_pb2.DescriptorProto], scope: str) -> Iterator[str]:
        for m in msgs:
            yield scope + m.name
            yield from (scope + m.name + "." + e.name for e in m.enum_type)
            yield from walk(m.nested_type, scope + m.name + ".")

    return {*walk(fd.message_type, prefix), *(prefix + e.name for e in fd.enum_type)}


def _referenced_types(fd: descriptor_pb2.FileDescriptorProto) -> Iterator[str]:
    def walk(msgs: Iterable[descriptor_pb2.DescriptorProto]) -> Iterator[str]:
        for m in msgs:
            yield from (fld.type_name for fld in m.field if fld.type_name)
            yield from walk(m.nested_type)

    yield from walk(fd.message_type)
    for s in fd.service:
        for rpc in s.method:
            yield rpc.input_type
            yield rpc.output_type


def lint(proto_dir: Path = PROTO_DIR) -> list[Finding]:
    """Every finding of buf.yaml's rules in the .proto files under ``proto_dir``."""
    return _Checker(compile_protos(proto_dir), Config.load(proto_dir)).run()


def main(argv: list[str]) -> int:
    proto_dir = Path(argv[0]) if argv else PROTO_DIR
    found = lint(proto_dir)
    for finding in found:
        print(finding)
    return 100 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
