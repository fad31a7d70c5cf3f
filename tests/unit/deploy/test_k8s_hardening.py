"""The Kubernetes manifests validate against the Kubernetes API schemas (bundled with
kubernetes-validate: no cluster), and the pod passes the Pod Security "restricted" level and
the checks a scanner makes, each written out here so a regression names what it broke."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
BASE = DEPLOY / "k8s" / "base"
#: Kinds defined by CRDs (cert-manager), which the bundled schemas do not have.
CRD_KINDS = {"Issuer", "Certificate", "ClusterIssuer"}
#: Kubernetes versions the manifests must be valid for: the oldest supported here, the newest.
VERSIONS = ("1.29.0", kv_utils.latest_version())
#: Volume types the restricted level allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def documents() -> list[dict[str, Any]]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for res in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / res).read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def pod_template() -> dict[str, Any]:
    template: dict[str, Any] = by_kind("StatefulSet")[0]["spec"]["template"]
    return template


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for doc in documents():
        if doc["kind"] in CRD_KINDS:
            continue
        # strict: an unknown field (a misspelt securityContext key) is an error, not ignored.
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 6


def test_a_misspelt_field_fails_validation() -> None:
    sts = by_kind("StatefulSet")[0]
    sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = (
        True
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, VERSIONS[-1], strict=True)


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """What the Pod Security "restricted" level (Kubernetes docs, v1.29+) refuses in a pod."""
    spec = template["spec"]
    pod_sc = spec.get("securityContext", {})
    out = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(f"{flag} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {volume['name']} is of type {kinds}")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]

        def effective(key: str, sc: dict[str, Any] = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if effective("runAsNonRoot") is not True:
            out.append(f"{name}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            out.append(f"{name}: runs as uid 0")
        seccomp = effective("seccompProfile") or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile is not RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps['add']}")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{name}: hostPort {port['hostPort']}")
    return out


def test_the_pod_passes_pod_security_restricted() -> None:
    assert restricted_violations(pod_template()) == []


def test_the_restricted_check_catches_a_regression() -> None:
    template = pod_template()
    sc = template["spec"]["containers"][0]["securityContext"]
    del sc["allowPrivilegeEscalation"]
    sc["capabilities"] = {"drop": ["NET_RAW"]}
    assert restricted_violations(template) == [
        "p2pagentd: allowPrivilegeEscalation is not false",
        "p2pagentd: capabilities do not drop ALL",
    ]


def test_the_namespace_enforces_restricted() -> None:
    labels = by_kind("Namespace")[0]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_scanner_checks_beyond_restricted() -> None:
    spec = pod_template()["spec"]
    c = spec["containers"][0]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    # What a read-only root leaves the daemon: its data volume and /tmp.
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/var/lib/p2pagent/data", "/tmp"} <= mounts
    assert spec["automountServiceAccountToken"] is False
    accounts = {d["metadata"]["name"]: d for d in by_kind("ServiceAccount")}
    sa = accounts[spec["serviceAccountName"]]
    assert sa["automountServiceAccountToken"] is False
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    assert spec["securityContext"]["runAsUser"] == spec["securityContext"]["runAsGroup"] == 10001
    # The certificate files are readable by the pod's group (non-root).
    csi = next(v["csi"] for v in spec["volumes"] if "csi" in v)
    assert csi["volumeAttributes"]["csi.cert-manager.io/fs-group"] == str(
        spec["securityContext"]["fsGroup"]
    )


def test_replicas_are_kept_apart() -> None:
    spec = pod_template()["spec"]
    labels = pod_template()["metadata"]["labels"]
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["labelSelector"]["matchLabels"].items() <= labels.items()
    spread = spec["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_probes_are_separate_and_startup_covers_a_slow_start() -> None:
    c = pod_template()["spec"]["containers"][0]
    commands = {
        p: tuple(c[p]["exec"]["command"])
        for p in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert commands["readinessProbe"] != commands["livenessProbe"]
    assert commands["livenessProbe"][-1] == "--live"  # alive while loading or draining
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_the_network_policy_admits_peers_clients_and_monitoring_only() -> None:
    policy = by_kind("NetworkPolicy")[0]["spec"]
    labels = pod_template()["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ports = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(ports) == {7400, 9400}
    assert ports[9400] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {7400, 53}


def test_the_gpu_variant_keeps_the_hardening() -> None:
    patch = yaml.safe_load((DEPLOY / "k8s" / "gpu" / "gpu-patch.yaml").read_text())
    spec = patch["spec"]["template"]["spec"]
    # A strategic merge patch keeps what it does not name: it must not name these.
    assert "securityContext" not in spec
    assert all("securityContext" not in c for c in spec["containers"])


def test_scanner_exceptions_are_exactly_the_documented_ones() -> None:
    # checkov (pip install checkov; checkov -d deploy/k8s/base) passes every other check.
    sts = by_kind("StatefulSet")[0]
    skips = {
        value.split("=", 1)[0]: value.split("=", 1)[1]
        for key, value in sts["metadata"]["annotations"].items()
        if key.startswith("checkov.io/skip")
    }
    assert set(skips) == {"CKV_K8S_11", "CKV_K8S_43", "CKV_K8S_15"}
    assert all(len(reason.split()) >= 8 for reason in skips.values())  # a reason, not a shrug
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    assert not image.endswith(":latest") and ":" in image  # a fixed version tag
