"""The configuration reference (docs/configuration.md) from the ``Config`` dataclasses.

Each setting is documented where it is declared, by the ``#:`` comment lines above it; a
setting declared right under another without a comment of its own shares that comment
(``ca``, ``cert`` and ``key``). The section tables come from the capability configs nested in
``Config`` (``[membership]``, ``[state]``, ...), so a knob added there appears here.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import textwrap
from collections.abc import Iterator
from typing import Any

from p2pagent.cli.daemon import parser as daemon_parser
from p2pagent.config import ENV_PREFIX, Config

_FIELD = re.compile(r"^    (\w+)\s*:")
_DOC = re.compile(r"^    #:\s?(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: its #: comment}`` read from the class source."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    previous: str | None = None  # doc of the field just above, for undocumented neighbours
    for line in textwrap.dedent(inspect.getsource(cls)).splitlines():
        if m := _DOC.match(line):
            pending.append(m.group(1).strip())
            continue
        if m := _FIELD.match(line):
            doc = " ".join(pending) if pending else previous
            if doc:
                docs[m.group(1)] = doc
            previous, pending = doc, []
            continue
        if not line.strip() or line.strip().startswith("#"):
            previous = None
            pending = [] if not line.strip() else pending
            continue
        pending, previous = [], None
    return docs


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return _show(f.name, f.default)
    factory = f.default_factory
    if factory in (list, dict):
        return "empty"
    if factory is dataclasses.MISSING:
        return "required"
    if inspect.isfunction(factory) and factory.__name__.startswith("_default"):
        # Computed on the machine at start-up (the node name is the host name).
        return "computed"
    return _show(f.name, factory())


def _show(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'`"{value}"`' if value else "empty"
    if name.endswith("_bytes") and isinstance(value, int) and value >= 1 << 20:
        if value % (1 << 30) == 0:
            return f"{value} ({value >> 30} GiB)"
        if value % (1 << 20) == 0:
            return f"{value} ({value >> 20} MiB)"
    if isinstance(value, list | tuple):
        return ", ".join(f"`{v}`" for v in value) or "empty"
    return str(value)


def _markdown(doc: str) -> str:
    """reST ``literals`` to markdown `literals`; table pipes escaped."""
    return doc.replace("``", "`").replace("|", "\\|")


def _flags() -> dict[str, str]:
    """``{config field: daemon flag}`` for the settings p2pagentd takes on its command line."""
    fields = {f.name for f in dataclasses.fields(Config)}
    out: dict[str, str] = {}
    for action in daemon_parser()._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        # A repeatable flag is singular (--tag K=V fills ``tags``).
        name = action.dest if action.dest in fields else f"{action.dest}s"
        if name in fields:
            out[name] = action.option_strings[-1]
    return out


def _rows(cls: type, section: str | None, flags: dict[str, str]) -> Iterator[str]:
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if _is_section(f):
            continue
        env = f"{ENV_PREFIX}{f.name.upper()}"
        if section is not None:
            env = f"{ENV_PREFIX}{section.upper()}__{f.name.upper()}"
        where = [f"`{env}`"]
        if section is None and f.name in flags:
            where.insert(0, f"`{flags[f.name]}`")
        yield (
            f"| `{f.name}` | {_markdown(_default(f))} | {' '.join(where)} | "
            f"{_markdown(docs.get(f.name, ''))} |"
        )


def _is_section(f: dataclasses.Field[Any]) -> bool:
    factory = f.default_factory
    return factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory)


def _section_class(f: dataclasses.Field[Any]) -> type:
    factory: Any = f.default_factory
    return type(factory())


def render() -> str:
    """The markdown of the configuration reference (without the markers around it)."""
    flags = _flags()
    out = [
        "Every setting can come from the TOML file (`--config FILE`), the environment or a",
        "flag; later sources win. Section settings go in `[section]` tables of the file, or",
        "`P2PAGENT_<SECTION>__<KEY>` in the environment. Lists are comma-separated in the",
        "environment and maps are `k=v,k=v`. An unknown key is an error, not a silent default.",
        "",
        "| key | default | flag / environment | meaning |",
        "|---|---|---|---|",
        *_rows(Config, None, flags),
    ]
    docs = field_docs(Config)
    for f in dataclasses.fields(Config):
        if not _is_section(f):
            continue
        section_cls = _section_class(f)
        about = re.sub(r"\s*\(``\[\w+\]``\)\.?$", ".", docs.get(f.name, ""))
        out += [
            "",
            f"**`[{f.name}]`**: {_markdown(about)}",
            "",
            "| key | default | environment | meaning |",
            "|---|---|---|---|",
            *_rows(section_cls, f.name, flags),
        ]
    return "\n".join(out) + "\n"
