"""The generated reference docs match the code: run `make docs` and commit when this fails."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from p2pagent.config import Config
from p2pagent.docgen import __main__ as docgen
from p2pagent.docgen import api_reference, config_reference
from p2pagent.transport import authorization


def test_configuration_reference_is_fresh() -> None:
    doc = docgen.CONFIGURATION.read_text()
    want = docgen.with_reference(doc, config_reference.render())
    assert doc == want, "docs/configuration.md is stale: run `make docs`"
    assert "| `listen` |" in doc


def test_authorization_table_is_fresh() -> None:
    doc = docgen.SECURITY.read_text()
    want = docgen.with_reference(doc, authorization.render(), docgen.AUTH_BEGIN, docgen.AUTH_END)
    assert doc == want, "docs/security.md authorization table is stale: run `make docs`"
    assert "| `/p2pagent.v1.AgentService/Revoke` | admin, node |" in doc


def test_docgen_check_reports_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(docgen.CONFIGURATION.read_text().replace("| `listen` |", "| `lisen` |"))
    monkeypatch.setattr(docgen, "CONFIGURATION", stale)
    assert docgen.main(["--check"]) == 1
    assert "configuration.md is stale" in capsys.readouterr().err


def test_the_readme_stays_a_page_and_its_links_resolve() -> None:
    readme = (docgen.ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 13_000, "README.md is a page: move detail into docs/"
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", readme):
        assert (docgen.ROOT / link).exists(), link


def test_api_reference_is_fresh() -> None:
    have = docgen.API.read_text() if docgen.API.exists() else ""
    assert have == api_reference.render(), "docs/API.md is stale: run `make docs`"


def test_every_setting_is_documented_and_listed() -> None:
    text = config_reference.render()
    for f in dataclasses.fields(Config):
        assert f"| `{f.name}` |" in text or f"**`[{f.name}]`**" in text, f.name
    docs = config_reference.field_docs(Config)
    undocumented = [f.name for f in dataclasses.fields(Config) if not docs.get(f.name)]
    assert undocumented == [], f"add a #: comment above {undocumented} in p2pagent/config.py"


def test_field_docs_reads_comments_and_shares_them_with_undocumented_neighbours() -> None:
    @dataclasses.dataclass
    class Example:
        #: First line
        #: and second line.
        a: int = 1
        b: int = 2

        #: Alone.
        c: str = ""

    docs = config_reference.field_docs(Example)
    assert docs == {
        "a": "First line and second line.",
        "b": "First line and second line.",
        "c": "Alone.",
    }


def test_api_reference_carries_proto_comments() -> None:
    text = api_reference.render()
    assert "| `Submit` |" in text and "journals it durably" in text
    assert "Node-to-node service" in text  # the comment above `package` in peer.proto
    assert '<a id="taskevent-kind"></a>' in text and "(#taskevent-kind)" in text


def _anchors(path: Path) -> set[str]:
    text = path.read_text()
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"(?m)^#+ (.*)$", re.sub(r"(?s)```.*?```", "", text)):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def test_links_between_the_readme_and_docs_resolve() -> None:
    root = docgen.ROOT
    broken = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = re.sub(r"(?s)```.*?```", "", doc.read_text())
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if link.startswith(("http://", "https://")):
                continue
            path, _, anchor = link.partition("#")
            target = (doc.parent / path).resolve() if path else doc
            if not target.exists():
                broken.append(f"{doc.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{doc.name}: {link} (no such heading)")
    assert broken == []
