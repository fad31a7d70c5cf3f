"""The ``[openai]`` section: off by default, set by file, environment or --http-listen, and
its bad values refused naming the setting."""

from __future__ import annotations

import pytest

from p2pagent.cli.daemon import flags_of, parser
from p2pagent.config import load
from p2pagent.errors import ConfigError


def test_off_by_default_and_set_three_ways() -> None:
    assert load(env={}).openai.listen == ""
    assert load(env={"P2PAGENT_OPENAI__LISTEN": "127.0.0.1:7480"}).openai.listen == (
        "127.0.0.1:7480"
    )
    args = parser().parse_args(["--http-listen", "127.0.0.1:7481"])
    assert load(env={}, flags=flags_of(args)).openai.listen == "127.0.0.1:7481"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"P2PAGENT_OPENAI__LISTEN": "nowhere"}, "openai.listen"),
        ({"P2PAGENT_OPENAI__MAX_REQUEST_BYTES": "10"}, "openai.max_request_bytes"),
        ({"P2PAGENT_OPENAI__MAX_EMBEDDING_INPUTS": "0"}, "openai.max_embedding_inputs"),
        ({"P2PAGENT_OPENAI__MAX_CONNECTIONS": "0"}, "openai.max_connections"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(env=env)
