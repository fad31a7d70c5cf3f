"""The generated reference docs match the code: run `make docs` and commit when this fails."""

from __future__ import annotations

import dataclasses

from p2pagent.config import Config
from p2pagent.docgen import __main__ as docgen
from p2pagent.docgen import api_reference, config_reference
from p2pagent.transport import authorization


def test_readme_configuration_reference_is_fresh() -> None:
    readme = docgen.README.read_text()
    want = docgen.readme_with_reference(readme, config_reference.render())
    assert readme == want, "README.md configuration reference is stale: run `make docs`"


def test_readme_authorization_table_is_fresh() -> None:
    readme = docgen.README.read_text()
    want = docgen.readme_with_reference(
        readme, authorization.render(), docgen.AUTH_BEGIN, docgen.AUTH_END
    )
    assert readme == want, "README.md authorization table is stale: run `make docs`"
    assert "| `/p2pagent.v1.Agent/Revoke` | admin, node |" in readme


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
