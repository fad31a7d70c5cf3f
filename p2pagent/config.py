"""One typed configuration for a node: TOML file < environment (``P2PAGENT_*``) < flags.

Every setting is a field below, documented where it is declared. Capability sections
(``[membership]``, ``[state]``, ...) are their own dataclasses, owned by their folders, and
are nested here. Unknown keys in the file are an error, never silently ignored: a typo in a
timing knob should not quietly run with the default.

Environment names: ``P2PAGENT_<FIELD>`` for top-level fields, ``P2PAGENT_<SECTION>__<FIELD>``
for sections (``P2PAGENT_MEMBERSHIP__PROBE_INTERVAL=0.5``). Lists are comma-separated and
maps are ``k=v,k=v``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from p2pagent.errors import ConfigError, InvalidArgument
from p2pagent.identity.material import TLSPaths
from p2pagent.identity.spiffe import check_name
from p2pagent.inference.config import InferenceConfig
from p2pagent.inference.generation.config import GenerationConfig
from p2pagent.membership.config import MembershipConfig
from p2pagent.models.config import ModelsConfig
from p2pagent.openai.config import OpenAIConfig
from p2pagent.state.config import StateConfig
from p2pagent.tasks.config import TasksConfig
from p2pagent.training.config import TrainingConfig
from p2pagent.transport.config import TransportConfig

ENV_PREFIX = "P2PAGENT_"
DEFAULT_PORT = 7400
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})$")


def parse_address(value: str, what: str = "address") -> tuple[str, int]:
    """Parses ``host:port`` or ``[v6]:port``; raises ConfigError naming the setting."""
    m = _HOSTPORT.match(value.strip())
    if not m:
        raise ConfigError(f"malformed {what} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:7400")
    port = int(m.group("port"))
    if not 0 <= port <= 65535:
        raise ConfigError(f"malformed {what} {value!r}: port must be 0-65535")
    return (m.group("v6") or m.group("host")), port


def _default_name() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "node"
    return host[:63].lstrip(".-_") or "node"


@dataclass
class Config:
    """Settings of one ``p2pagentd``."""

    #: Unique node name in the cluster; also the certificate name under ``certs``.
    name: str = field(default_factory=_default_name)
    #: Address the gRPC server binds.
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    #: Address peers and clients dial; defaults to ``listen`` (required when it is a wildcard).
    advertise: str = ""
    #: Addresses of existing nodes to join through (any one alive is enough).
    seeds: list[str] = field(default_factory=list)
    #: Certificate directory holding ca.crt, <name>.crt and <name>.key.
    certs: str = ""
    #: Explicit certificate paths; each overrides the one found in ``certs``.
    ca: str = ""
    cert: str = ""
    key: str = ""
    #: Seconds between checks of the certificate files; a change reloads them as SIGHUP
    #: does (for renewers that rewrite files in place, like cert-manager's csi-driver).
    #: 0 disables the checks.
    cert_check_interval: float = 30.0
    #: Data directory: replicated state, membership incarnation, task journal, model chunks.
    data: str = ""
    #: HOST:PORT for Prometheus metrics over HTTP; empty disables them.
    metrics: str = ""
    #: Inference device: auto, cpu or cuda:N. `auto` without an NVIDIA driver on the host (no
    #: `/proc/driver/nvidia`, `/dev/nvidia*` or `/dev/dxg`) is `cpu`, decided without importing
    #: torch; otherwise torch is imported at start to ask CUDA. Torch (~200 MB) otherwise loads
    #: at start only on a node with `--serve`, else on its first model load or Infer.
    device: str = "auto"
    #: Free-form member tags replicated with membership.
    tags: dict[str, str] = field(default_factory=dict)
    #: Log level (debug, info, warning, error) and format (text or json).
    log_level: str = "info"
    log_format: str = "text"
    #: Largest gRPC message accepted or sent, in bytes.
    max_message_bytes: int = 64 * 1024 * 1024
    #: Seconds in-flight calls get to finish on SIGTERM.
    grace_period: float = 5.0
    #: Requests per second allowed per caller identity on the public API, with bursts of
    #: twice as many; more is RESOURCE_EXHAUSTED carrying the milliseconds to wait in the
    #: trailing metadata ``p2pagent-retry-after-ms``. Nodes are never limited. 0 = unlimited.
    rate_limit: float = 1000.0
    #: Model files served from local disk: NAME=PATH[@METADATA.json] (see api.local_models).
    serve: list[str] = field(default_factory=list)
    #: Batching, queue bounds, threads and model cache (``[inference]``).
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    #: SWIM timings, fanout, tag limits (``[membership]``).
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    #: Replicated state: gossip, message size limit, value limits (``[state]``).
    state: StateConfig = field(default_factory=StateConfig)
    #: Model store and transfer: chunk size, pipeline depth, upload cap (``[models]``).
    models: ModelsConfig = field(default_factory=ModelsConfig)
    #: Work stealing, leases and retries (``[tasks]``).
    tasks: TasksConfig = field(default_factory=TasksConfig)
    #: Connection and stream limits: TLS handshake timeout, idle connections, streams per
    #: connection and per identity (``[transport]``).
    transport: TransportConfig = field(default_factory=TransportConfig)
    #: Parameter averaging: group size, adaptive deadlines, part checks (``[training]``).
    training: TrainingConfig = field(default_factory=TrainingConfig)
    #: Decoder folders served for text generation, KV cache budget, batch and queue bounds
    #: (``[generation]``).
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    #: The OpenAI-compatible HTTPS door (mutual TLS), off unless ``listen`` is set
    #: (``[openai]``).
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)

    # ---- derived views -------------------------------------------------------------------

    def tls_paths(self) -> TLSPaths:
        if not self.certs and not (self.ca and self.cert and self.key):
            raise ConfigError("no certificates: pass --certs DIR (or --ca, --cert and --key)")
        base = TLSPaths.in_dir(Path(self.certs), self.name) if self.certs else None
        return TLSPaths(
            Path(self.ca) if self.ca else base.ca,  # type: ignore[union-attr]
            Path(self.cert) if self.cert else base.cert,  # type: ignore[union-attr]
            Path(self.key) if self.key else base.key,  # type: ignore[union-attr]
        )

    def advertised(self) -> str:
        if self.advertise:
            return self.advertise
        host, _ = parse_address(self.listen, "listen address")
        if host in ("0.0.0.0", "::", ""):
            raise ConfigError(
                f"listening on {self.listen} needs --advertise HOST:PORT so peers can dial back"
            )
        return self.listen

    def data_dir(self) -> Path:
        return Path(self.data) if self.data else Path("p2pagent-data") / self.name

    def validate(self) -> Config:
        try:
            check_name(self.name, "node name")
        except InvalidArgument as e:
            raise ConfigError(str(e)) from None
        parse_address(self.listen, "listen address")
        if self.advertise:
            parse_address(self.advertise, "advertise address")
        for seed in self.seeds:
            parse_address(seed, "seed address")
        if self.metrics:
            parse_address(self.metrics, "metrics address")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"unknown log format {self.log_format!r}: choose text or json")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"unknown log level {self.log_level!r}")
        if self.grace_period < 0:
            raise ConfigError("grace_period must be >= 0 seconds")
        if self.rate_limit < 0:
            raise ConfigError("rate_limit must be >= 0 requests/s per client (0 disables it)")
        if self.cert_check_interval < 0:
            raise ConfigError("cert_check_interval must be >= 0 seconds (0 disables it)")
        if self.max_message_bytes < 1024 * 1024:
            raise ConfigError("max_message_bytes must be at least 1048576 (1 MiB)")
        self.advertised()
        self.inference.validate()
        self.membership.validate()
        self.state.validate()
        self.models.validate()
        self.tasks.validate()
        self.transport.validate()
        self.training.validate()
        self.generation.validate()
        self.openai.validate()
        return self


#: Keys that moved into a section: naming one at the top level is refused with where it went
#: (in a file, the environment or a flag), rather than silently ignored.
MOVED = {"placement": "tasks.placement"}

T = TypeVar("T")


def load(
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Builds a Config from a TOML file, then the environment, then flags (last wins)."""
    cfg = Config()
    if file:
        path = Path(file)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {file}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {file} is not valid TOML: {e}") from None
        _apply(cfg, data, f"config file {file}")
    _apply(cfg, _from_env(env if env is not None else os.environ), "environment", strings=True)
    if flags:
        _apply(cfg, {k: v for k, v in flags.items() if v is not None}, "flag")
    return cfg.validate()


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in known and not (len(parts) == 1 and parts[0] in MOVED):
            continue  # other tools share the prefix (P2PAGENT_TARGET for p2pagentctl)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _apply(obj: Any, data: Mapping[str, Any], source: str, strings: bool = False) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        name = key.replace("-", "_")
        if isinstance(obj, Config) and name in MOVED:
            section, field_name = MOVED[name].split(".")
            env = f"{ENV_PREFIX}{section.upper()}__{field_name.upper()}"
            raise ConfigError(
                f"{key!r} in {source} moved to [{section}] {field_name} (environment {env}); "
                "set it there"
            )
        if name not in fields:
            raise ConfigError(
                f"unknown key {key!r} in {source}; known keys: {', '.join(sorted(fields))}"
            )
        hint = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key!r} in {source} must be a table of settings")
            _apply(current, value, f"{source} [{key}]", strings)
            continue
        setattr(obj, name, _coerce(value, hint, f"{key!r} in {source}", strings))


def _coerce(value: Any, hint: Any, what: str, strings: bool) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, args[0], what, strings)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            return int(value) if isinstance(value, int | str) else _fail()
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, int | float | str) else _fail()
            if not math.isfinite(number):
                raise ConfigError(f"{what} must be a finite number, got {value!r}")
            return number
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError
        if origin is dict:
            if isinstance(value, str):
                pairs = [p for p in value.split(",") if p.strip()]
                if not all("=" in p for p in pairs):
                    raise ValueError
                return dict(p.strip().split("=", 1) for p in pairs)
            if isinstance(value, Mapping):
                return {str(k): str(v) for k, v in value.items()}
            raise ValueError
    except (TypeError, ValueError):
        pass
    type_name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{what} must be {type_name}, got {value!r}")


def _fail() -> Any:
    raise ValueError
