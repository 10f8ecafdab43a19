"""deploy/kubernetes: every object validates against the schemas of the Kubernetes version the
README names (unknown fields rejected), and the DaemonSet does what the README says it does."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from debugregd.config import parse
from tests.deploy.fleet import MANIFESTS

KUBERNETES_VERSION = "1.35"
README = MANIFESTS.parents[2] / "README.md"


def objects() -> dict[str, dict[str, Any]]:
    """The manifests' objects by kind (one of each)."""
    found = [o for o in yaml.safe_load_all(MANIFESTS.read_text()) if o]
    by_kind = {o["kind"]: o for o in found}
    assert len(by_kind) == len(found), "one object of each kind"
    return by_kind


def daemon_pod() -> dict[str, Any]:
    spec: dict[str, Any] = objects()["DaemonSet"]["spec"]["template"]["spec"]
    return spec


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name]
    return found


@pytest.mark.parametrize(
    "kind", ["Namespace", "ServiceAccount", "DaemonSet", "Service", "NetworkPolicy"]
)
def test_each_object_validates_against_the_kubernetes_schema(kind: str) -> None:
    kubernetes_validate.validate(objects()[kind], KUBERNETES_VERSION, strict=True)


def test_the_readme_names_the_version_validated_against() -> None:
    assert f"Kubernetes {KUBERNETES_VERSION}**" in README.read_text()
    assert f"Kubernetes {KUBERNETES_VERSION} schemas" in MANIFESTS.read_text()


def test_the_validator_rejects_what_the_api_server_would() -> None:
    broken = objects()["DaemonSet"]
    broken["spec"]["template"]["spec"]["hostPIDs"] = True  # a typo the API server rejects
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_daemon_serves_tls_from_a_secret_and_is_probed_over_https() -> None:
    pod = daemon_pod()
    daemon = container(pod, "debugregd")
    args = parse(["serve", *daemon["args"]])  # flags `debugregd serve` really takes
    assert args.host == "0.0.0.0" and args.backend == "perf"
    mounts = {m["name"]: m for m in daemon["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tls_dir = mounts["tls"]["mountPath"]
    assert mounts["tls"]["readOnly"] is True
    assert volumes["tls"]["secret"]["secretName"] == "debugregd-tls"
    assert str(args.tls_cert).startswith(tls_dir + "/")
    assert str(args.tls_key).startswith(tls_dir + "/")
    env = {e["name"]: e for e in daemon["env"]}
    assert env["DEBUGREGD_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "debugregd-admin"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert daemon[probe]["httpGet"]["scheme"] == "HTTPS", probe
        assert daemon[probe]["httpGet"]["path"] == "/healthz", probe
    assert "Secret" not in objects(), "no key or certificate is shipped in the manifests"


def test_an_init_step_makes_the_state_directory_0700_before_the_daemon_starts() -> None:
    pod = daemon_pod()
    state = container(pod, "debugregd")["env"]
    state_dir = {e["name"]: e.get("value") for e in state}["DEBUGREGD_STATE_DIR"]
    (init,) = pod["initContainers"]
    (mount,) = [m for m in init["volumeMounts"] if m["name"] == "state"]
    assert mount["mountPath"] == state_dir
    assert f"chmod 0700 {state_dir}" in " ".join(init["command"])
    volume = {v["name"]: v for v in pod["volumes"]}["state"]
    assert volume["hostPath"]["path"] == state_dir


def test_every_container_has_limits_and_only_the_capabilities_it_needs() -> None:
    pod = daemon_pod()
    for c in pod["containers"] + pod["initContainers"]:
        resources = c["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), c["name"]
        assert {"cpu", "memory"} <= resources["limits"].keys(), c["name"]
        security = c["securityContext"]
        assert security["capabilities"]["drop"] == ["ALL"], c["name"]
        assert security["allowPrivilegeEscalation"] is False, c["name"]
        assert security["readOnlyRootFilesystem"] is True, c["name"]
    daemon = container(pod, "debugregd")
    # perf_event_open on host tasks: CAP_PERFMON and the host PID namespace, explained inline.
    assert daemon["securityContext"]["capabilities"]["add"] == ["PERFMON"]
    assert pod["hostPID"] is True
    text = MANIFESTS.read_text()
    assert "CAP_PERFMON" in text and "CAP_SYS_ADMIN" in text and "host's PID namespace" in text
    assert pod["automountServiceAccountToken"] is False


def test_only_monitoring_and_labelled_client_namespaces_reach_the_daemon() -> None:
    policy = objects()["NetworkPolicy"]["spec"]
    labels = objects()["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"] == labels
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["egress"] == []  # the daemon starts no connection
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == [8765]
    assert [peer["namespaceSelector"]["matchLabels"] for peer in rule["from"]] == [
        {"kubernetes.io/metadata.name": "monitoring"},
        {"debugregd-client": "true"},
    ]


def test_a_client_reaches_the_daemon_of_its_own_node() -> None:
    service = objects()["Service"]
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert service["spec"]["selector"] == objects()["DaemonSet"]["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [8765]
