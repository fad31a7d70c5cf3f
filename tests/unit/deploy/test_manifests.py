"""Deployment files are checked structurally (no kubectl or Docker engine on CI machines)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from p2pagent.cli.daemon import parser as daemon_parser
from p2pagent.config import Config

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
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"][-1] == "p2pagent.cli.health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind["PodDisruptionBudget"][0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    csi = next(v["csi"] for v in pod["volumes"] if "csi" in v)["volumeAttributes"]
    assert csi["csi.cert-manager.io/uri-sans"].startswith("spiffe://k8s/node/")
    assert "node.k8s.p2pagent" in csi["csi.cert-manager.io/dns-names"]
    assert {i["kind"] for i in by_kind["Issuer"]} == {"Issuer"}


def test_every_p2pagent_env_var_in_manifests_is_a_config_field() -> None:
    fields = {f.upper() for f in Config.__dataclass_fields__}
    sts = next(d for d in _all_k8s() if d["kind"] == "StatefulSet")
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"][len("P2PAGENT_") :] for e in env if e["name"].startswith("P2PAGENT_")]
    assert names and set(names) <= fields
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for svc in ("node1", "node2", "node3"):
        args = compose["services"][svc]["command"]
        daemon_parser().parse_args(args)  # every flag exists


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


def test_dockerfile_runs_as_non_root_with_health_check() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "\nUSER p2pagent" in text
    assert "HEALTHCHECK" in text and "p2pagent.cli.health" in text
    assert "ARG VARIANT=cpu" in text
    assert 'VOLUME ["/var/lib/p2pagent/data"]' in text


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
