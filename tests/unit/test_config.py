from __future__ import annotations

from pathlib import Path

import pytest

from p2pagent.config import load, parse_address
from p2pagent.errors import ConfigError


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return str(p)


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        'name = "file"\nlisten = "127.0.0.1:1000"\nmetrics = "127.0.0.1:9000"\n'
        'seeds = ["127.0.0.1:1", "127.0.0.1:2"]\n[tags]\nzone = "a"\n',
    )
    env = {
        "P2PAGENT_NAME": "env",
        "P2PAGENT_LISTEN": "127.0.0.1:2000",
        "P2PAGENT_TAGS": "zone=b,rack=7",
        "P2PAGENT_TARGET": "ignored: belongs to p2pagentctl",
    }
    cfg = load(f, env, {"name": "flag"})
    assert cfg.name == "flag"  # flag beats env and file
    assert cfg.listen == "127.0.0.1:2000"  # env beats file
    assert cfg.metrics == "127.0.0.1:9000"  # file beats default
    assert cfg.seeds == ["127.0.0.1:1", "127.0.0.1:2"]
    assert cfg.tags == {"zone": "b", "rack": "7"}


def test_defaults_without_any_source() -> None:
    cfg = load(None, {}, {"name": "solo"})
    assert cfg.listen == "127.0.0.1:7400"
    assert cfg.advertised() == "127.0.0.1:7400"
    assert cfg.tasks.placement == "work_stealing"


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    f = _write(tmp_path, 'name = "x"\nprobe_intervall = 3\n')
    with pytest.raises(ConfigError, match="unknown key 'probe_intervall'"):
        load(f, {}, {})


def test_wrong_type_is_named(tmp_path: Path) -> None:
    f = _write(tmp_path, 'name = "x"\ngrace_period = "soon"\n')
    with pytest.raises(ConfigError, match=r"'grace_period'.*must be float"):
        load(f, {}, {})
    with pytest.raises(ConfigError, match="must be int"):
        load(None, {"P2PAGENT_MAX_MESSAGE_BYTES": "lots"}, {"name": "x"})


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(text: str) -> None:
    # float() takes them, and every "must be > 0" check lets NaN through.
    with pytest.raises(ConfigError, match=r"'grace_period'.*must be a finite number"):
        load(None, {}, {"name": "x", "grace_period": float(text)})
    with pytest.raises(ConfigError, match="must be a finite number"):
        load(None, {"P2PAGENT_TASKS__LEASE_S": text}, {"name": "x"})


def test_negative_grace_period_and_rate_limit() -> None:
    with pytest.raises(ConfigError, match="grace_period must be >= 0"):
        load(None, {}, {"name": "x", "grace_period": -1.0}).validate()
    with pytest.raises(ConfigError, match="rate_limit must be >= 0"):
        load(None, {}, {"name": "x", "rate_limit": -1.0}).validate()


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(_write(tmp_path, "name = = 1"), {}, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "missing.toml"), {}, {})


@pytest.mark.parametrize("bad", ["localhost", "1.2.3.4:", ":80", "host:99999", "a b:1", "[::1:80"])
def test_malformed_addresses(bad: str) -> None:
    with pytest.raises(ConfigError, match="malformed"):
        parse_address(bad)
    with pytest.raises(ConfigError, match="listen address"):
        load(None, {}, {"name": "x", "listen": bad})


def test_ipv6_and_wildcard_listen() -> None:
    assert parse_address("[::1]:7400") == ("::1", 7400)
    with pytest.raises(ConfigError, match="--advertise"):
        load(None, {}, {"name": "x", "listen": "0.0.0.0:7400"})
    cfg = load(None, {}, {"name": "x", "listen": "0.0.0.0:7400", "advertise": "10.0.0.1:7400"})
    assert cfg.advertised() == "10.0.0.1:7400"


def test_bad_node_name_and_placement() -> None:
    with pytest.raises(ConfigError, match="node name"):
        load(None, {}, {"name": "../etc"})
    with pytest.raises(ConfigError, match=r"unknown tasks\.placement 'random'"):
        load(None, {}, {"name": "x", "tasks": {"placement": "random"}})


def test_placement_moved_into_tasks_and_the_old_key_says_where(tmp_path: Path) -> None:
    cfg = load(None, {"P2PAGENT_TASKS__PLACEMENT": "local"}, {"name": "x"})
    assert cfg.tasks.placement == "local"
    old = tmp_path / "old.toml"
    old.write_text('placement = "local"\n')
    moved = r"moved to \[tasks\] placement \(environment P2PAGENT_TASKS__PLACEMENT\)"
    with pytest.raises(ConfigError, match=moved):
        load(str(old), {}, {"name": "x"})
    with pytest.raises(ConfigError, match=moved):
        load(None, {"P2PAGENT_PLACEMENT": "local"}, {"name": "x"})
    from p2pagent.cli.daemon import flags_of, parser

    flags = flags_of(parser().parse_args(["--name", "x", "--placement", "round_robin"]))
    assert load(None, {}, flags).tasks.placement == "round_robin"


def test_missing_certificates_message() -> None:
    cfg = load(None, {}, {"name": "x"})
    with pytest.raises(ConfigError, match="--certs"):
        cfg.tls_paths()
    assert cfg.__class__(name="n1", certs="/c").tls_paths().cert == Path("/c/n1.crt")


def test_state_sync_timings_are_settings_and_checked() -> None:
    env = {"P2PAGENT_STATE__PUSH_TIMEOUT": "2.5", "P2PAGENT_STATE__MAX_IN_FLIGHT_PER_PEER": "3"}
    cfg = load(None, env, {"name": "x"})
    assert (cfg.state.push_timeout, cfg.state.max_in_flight_per_peer) == (2.5, 3)
    for key, value in (("persist_linger", 0.0), ("anti_entropy_timeout", -1.0)):
        with pytest.raises(ConfigError, match=rf"state\.{key} must be positive"):
            load(None, {}, {"name": "x", "state": {key: value}}).validate()
    with pytest.raises(ConfigError, match=r"state\.max_in_flight_per_peer must be at least 1"):
        load(None, {}, {"name": "x", "state": {"max_in_flight_per_peer": 0}}).validate()
