"""Deployment files are checked structurally (no kubectl or Docker engine on CI machines)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from p2pagent.cli.daemon import parser as daemon_parser
from p2pagent.config import Config, load

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_k8s() -> list[dict[str, Any]]:
    kust = yaml.safe_load((DEPLOY / "k8s" / "base" / "kustomization.yaml").read_text())
    out = []
    for res in kust["resources"]:
        out += _docs(DEPLOY / "k8s" / "base" / res)
    return out


def test_kustomization_lists_every_manifest_and_each_is_well_formed() -> None:
    kust = yaml.safe_load((DEPLOY / "k8s" / "base" / "kustomization.yaml").read_text())
    on_disk = {p.name for p in (DEPLOY / "k8s" / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk
    for doc in _all_k8s():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"].get("name")


def test_statefulset_uses_headless_service_probes_and_pdb() -> None:
    docs = _all_k8s()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    sts = by_kind["StatefulSet"][0]
    headless = [s for s in by_kind["Service"] if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == [sts["spec"]["serviceName"]]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"][2] == "p2pagent.cli.health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind["PodDisruptionBudget"][0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    csi = next(v["csi"] for v in pod["volumes"] if "csi" in v)["volumeAttributes"]
    assert csi["csi.cert-manager.io/uri-sans"].startswith("spiffe://k8s/node/")
    assert "node.k8s.p2pagent" in csi["csi.cert-manager.io/dns-names"]
    assert {i["kind"] for i in by_kind["Issuer"]} == {"Issuer"}


def _dockerfile_env() -> dict[str, str]:
    """The image's ENV settings (``ENV A=1 \\`` continuation lines, as the Dockerfile has)."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in line[4:].split():
                k, v = item.split("=", 1)
                env[k] = v
    return env


def _sts_env(pod: str) -> dict[str, str]:
    """The StatefulSet container's environment as Kubernetes expands it for ``pod``."""
    sts = next(d for d in _all_k8s() if d["kind"] == "StatefulSet")
    env: dict[str, str] = {}
    for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in e:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[e["name"]] = pod
        else:
            value = e["value"]
            for k, v in env.items():
                value = value.replace(f"$({k})", v)
            env[e["name"]] = value
    return env


def test_every_k8s_pod_gets_a_valid_config_and_reaches_the_seeds() -> None:
    fields = {f.upper() for f in Config.__dataclass_fields__}
    sts = next(d for d in _all_k8s() if d["kind"] == "StatefulSet")
    replicas = sts["spec"]["replicas"]
    service = sts["spec"]["serviceName"]
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(replicas)]
    for pod in pods:
        env = {**_dockerfile_env(), **_sts_env(pod)}
        names = [k[len("P2PAGENT_") :] for k in env if k.startswith("P2PAGENT_")]
        assert set(names) <= fields
        cfg = load(None, env, {})  # validates, as the daemon and the health probe do
        assert cfg.name == pod
        assert cfg.advertise.startswith(f"{pod}.{service}.")
        assert {s.split(".")[0] for s in cfg.seeds} == set(pods)
        tls = cfg.tls_paths()
        mount = next(
            m["mountPath"]
            for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            if m["name"] == "tls"
        )
        assert {tls.ca.parent, tls.cert.parent, tls.key.parent} == {Path(mount)}


def test_every_compose_node_gets_a_valid_config_its_health_check_can_read() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    nodes = [n for n in compose["services"] if n.startswith("node")]
    assert len(nodes) == 3
    for name in nodes:
        svc = compose["services"][name]
        daemon_parser().parse_args(svc.get("command", []))  # every flag exists
        # Name and advertised address must be environment settings: the image's
        # HEALTHCHECK reads P2PAGENT_* and cannot see the daemon's flags.
        cfg = load(None, {**_dockerfile_env(), **svc["environment"]}, {})
        assert cfg.name == name and cfg.advertise == f"{name}:7400"
        assert set(cfg.seeds) == {f"{n}:7400" for n in nodes}
        assert any(v.endswith(":/var/lib/p2pagent/data") for v in svc["volumes"])
    assert compose["services"]["certs"]["entrypoint"][0] == "/bin/sh"
    for name in nodes:
        deps = compose["services"][name]["depends_on"]
        assert deps["certs"]["condition"] == "service_completed_successfully"


def test_no_container_but_the_certificate_step_mounts_the_ca_key() -> None:
    """Issue 21: each node gets its own certificate, its key and ca.crt only."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    mounts = {
        name: {v.split(":")[0]: v.split(":")[1] for v in svc.get("volumes", [])}
        for name, svc in services.items()
    }
    assert [n for n, m in mounts.items() if "ca" in m] == ["certs"]
    step = " ".join(services["certs"]["command"])
    nodes = [n for n in services if n.startswith("node")]
    own = {}
    for name in nodes:
        certs_volume = next(v for v, path in mounts[name].items() if path == "/etc/p2pagent/certs")
        own[name] = certs_volume
        # What the step copies into that volume: ca.crt and the node's own pair.
        assert mounts["certs"][certs_volume] == f"/out/{name}"
    assert len(set(own.values())) == len(nodes)  # no two nodes share a certificate volume
    assert "cp /ca/ca.crt /ca/$$n.crt /ca/$$n.key /out/$$n/" in step
    assert "ca.key" not in step
    # Kubernetes: pods get their certificate from the csi-driver; the CA's secret (its key)
    # is mounted by no pod.
    for doc in _all_k8s():
        if doc["kind"] == "StatefulSet":
            volumes = doc["spec"]["template"]["spec"]["volumes"]
            assert not any(v.get("secret", {}).get("secretName") == "p2pagent-ca" for v in volumes)
    operator = [d for d in _all_k8s() if d["kind"] == "Certificate" and not d["spec"].get("isCA")]
    assert {u.split("/")[3] for d in operator for u in d["spec"]["uris"]} == {"admin"}


def test_gpu_variant_requests_a_gpu() -> None:
    patch = yaml.safe_load((DEPLOY / "k8s" / "gpu" / "gpu-patch.yaml").read_text())
    limits = patch["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_systemd_unit_is_hardened_and_notifies() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "p2pagentd.service").read_text())
    svc = unit["Service"]
    assert svc["Type"] == "notify"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["User"] == "p2pagent"
    assert "HUP" in svc["ExecReload"]
    # A configuration error (exit 2) is not restarted every RestartSec forever.
    assert svc["RestartPreventExitStatus"] == "2"
    assert svc["SystemCallFilter"].split()[0] == "@system-service"
    # The model worker's Landlock fence must stay allowed by the filter.
    assert "landlock_restrict_self" in svc["SystemCallFilter"]
    assert svc["ProtectProc"] == "invisible"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit_and_rates_it_well_hardened(tmp_path: Path) -> None:
    # ExecStart must exist for `verify`; everything else is the shipped unit.
    text = (DEPLOY / "systemd" / "p2pagentd.service").read_text()
    unit = tmp_path / "p2pagentd.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", text))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for an unknown key (a misspelt hardening option): read its words.
    assert verify.returncode == 0 and "Unknown" not in verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert level is not None, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.5, security.stdout  # 0 best, 10 worst; 3.7 before


def test_dockerfile_runs_as_non_root_with_health_check() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert "\nUSER 10001:10001" in text
    assert "HEALTHCHECK" in text and "p2pagent.cli.health" in text
    assert "ARG VARIANT=cpu" in text
    assert 'VOLUME ["/var/lib/p2pagent/data"]' in text
    # Multi-stage: build tools and pip caches stay out of the runtime image.
    assert " AS build" in text and "COPY --from=build" in text
    # The volume's directory exists and is the user's before VOLUME, or it mounts as root's.
    assert text.index("install -d -o 10001 -g 10001") < text.index("\nVOLUME [")
    # torch can come from a local wheel folder instead of the PyTorch index.
    assert "COPY deploy/docker/wheels /wheels" in text and "--find-links /wheels" in text
    assert 'if [ "$VARIANT" = "cpu" ]' in text


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
@pytest.mark.parametrize("overlay", ["k8s", "k8s/gpu"])
def test_kustomize_renders_offline(overlay: str) -> None:
    # `kubectl kustomize` needs no API server (CI has none); it catches broken patches/refs.
    r = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / overlay)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(r.stdout) if d]
    assert "StatefulSet" in kinds and "PodDisruptionBudget" in kinds
    if overlay.endswith("gpu"):
        assert "nvidia.com/gpu" in r.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_unit_has_no_unknown_or_invalid_settings(tmp_path: Path) -> None:
    # `verify` also insists the binary exists; only the binary path is swapped for one that
    # does. Unknown keys are only warnings (status 0), so the output is checked.
    text = (DEPLOY / "systemd" / "p2pagentd.service").read_text()
    lines = [
        "ExecStart=/bin/sleep 1" if ln.startswith("ExecStart=") else ln for ln in text.splitlines()
    ]
    unit = tmp_path / "p2pagentd.service"
    unit.write_text("\n".join(lines) + "\n")
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for bad in ("Unknown key", "Unknown section", "Invalid", "Failed to parse"):
        assert bad not in out, out


def test_build_context_sends_only_what_the_dockerfile_copies() -> None:
    ignore = (DEPLOY.parent / ".dockerignore").read_text().splitlines()
    rules = [r for r in ignore if r and not r.startswith("#")]
    assert rules[0] == "**"  # everything out (.venv is gigabytes, keys must never ship) ...
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied: set[str] = set()
    for line in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied |= {p.rstrip("/") for p in line.split()[1:-1]}
    assert copied == allowed  # ... except exactly what the image copies
    assert "**/*.key" in rules
