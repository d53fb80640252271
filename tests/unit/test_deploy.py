"""deploy/kubernetes against the Kubernetes schemas and against the configuration code.

``kubernetes-validate`` ships the OpenAPI-derived JSON schemas of each Kubernetes
release inside the package, so nothing is fetched: every manifest is validated in
strict mode (unknown fields are errors) for the oldest and the newest release it knows
of those we support.  The rest are the promises the manifests make to an operator.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml

from service.config import Settings, load_settings
from service.daemon.listeners import check_exposure

ROOT = Path(__file__).parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
#: The Kubernetes releases the manifests must be valid for (oldest supported, newest).
RELEASES = ("1.30.0", kubernetes_validate.latest_version())


#: The one manifest of a kind that is not named "consumergen" is keyed "Kind/name".
_MAIN_NAME = "consumergen"


def _documents() -> dict[str, dict[str, Any]]:
    """kind -> manifest (``Kind/name`` for a second one of a kind), from every file but
    the kustomization."""
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            name = doc["metadata"]["name"]
            key = doc["kind"]
            if doc["kind"] == "Secret" and name != _MAIN_NAME:
                key = f"Secret/{name}"
            assert key not in documents, f"two {key}s"
            documents[key] = doc
    return documents


def test_every_kind_the_operator_needs_is_there() -> None:
    assert set(_documents()) == {
        "ConfigMap",
        "Secret",
        "Secret/consumergen-read-api",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Job",
        "NetworkPolicy",
    }


@pytest.mark.parametrize("release", RELEASES)
def test_every_manifest_validates_against_the_kubernetes_schemas(release: str) -> None:
    for kind, doc in _documents().items():
        try:
            kubernetes_validate.validate(doc, release, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} invalid for Kubernetes {release}: {exc.message} at {exc.path}")


def test_the_validator_does_reject_a_broken_manifest() -> None:
    """The check above is not vacuous: a typo'd field and a wrong type are caught."""
    deployment = _documents()["Deployment"]
    typo = yaml.safe_load(yaml.safe_dump(deployment))
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, RELEASES[-1], strict=True)
    wrong = yaml.safe_load(yaml.safe_dump(deployment))
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, RELEASES[-1], strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.example.yaml"}


def _pod_specs() -> dict[str, dict[str, Any]]:
    docs = _documents()
    return {
        "Deployment": docs["Deployment"]["spec"]["template"]["spec"],
        "Job": docs["Job"]["spec"]["template"]["spec"],
    }


def test_pods_run_as_the_images_numeric_user_with_a_read_only_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    [image_user] = re.findall(r"^USER (\d+)", dockerfile, re.M)
    for kind, pod in _pod_specs().items():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, kind
        assert str(security["runAsUser"]) == image_user, kind
        assert security["seccompProfile"]["type"] == "RuntimeDefault", kind
        mounts_ok = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            c = container["securityContext"]
            assert c["readOnlyRootFilesystem"] is True, kind
            assert c["allowPrivilegeEscalation"] is False, kind
            assert c["capabilities"]["drop"] == ["ALL"], kind
            mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert {"/tmp", "/data"} <= set(mounted), kind
            # Writable: only emptyDir volumes; a Secret may be mounted read-only.
            secrets = {v["name"] for v in pod["volumes"] if "secret" in v}
            read_only = {m["name"] for m in container["volumeMounts"] if m.get("readOnly")}
            assert set(mounted.values()) <= mounts_ok | (secrets & read_only), kind
            assert container["resources"]["requests"]["memory"], kind
            assert container["resources"]["limits"]["memory"], kind


def test_probes_ports_and_selectors_agree() -> None:
    docs = _documents()
    config = docs["ConfigMap"]["data"]
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    port, read_api = container["ports"]
    assert (port["name"], read_api["name"]) == ("http", "read-api")
    assert port["containerPort"] == int(config["CONSUMERGEN_HEALTH_PORT"])
    assert read_api["containerPort"] == int(config["CONSUMERGEN_READ_API_PORT"])
    assert config["CONSUMERGEN_HEALTH_HOST"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    labels = pod["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        docs["Service"]["spec"]["selector"],
        docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items(), selector
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    assert [p["targetPort"] for p in docs["Service"]["spec"]["ports"]] == ["http", "read-api"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port["containerPort"])
    # A stop finishes its in-flight batches before the kubelet's SIGKILL.
    grace = float(config["CONSUMERGEN_SHUTDOWN_GRACE_SECONDS"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace + 5
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_the_job_migrates_with_the_daemons_image_and_configuration() -> None:
    pods = _pod_specs()
    [job] = pods["Job"]["containers"]
    [daemon] = pods["Deployment"]["containers"]
    assert job["args"] == ["db", "upgrade"]
    assert daemon["args"] == ["run"]
    assert job["image"] == daemon["image"]
    assert job["envFrom"] == daemon["envFrom"]
    assert pods["Job"]["restartPolicy"] == "Never"


def test_configmap_and_secret_are_valid_settings_together() -> None:
    docs = _documents()
    env = {**docs["ConfigMap"]["data"], **docs["Secret"]["stringData"]}
    for key in env:
        assert key.startswith("CONSUMERGEN_"), key
        assert key.removeprefix("CONSUMERGEN_").lower() in Settings.model_fields, key
    secret_keys = set(docs["Secret"]["stringData"])
    assert {"CONSUMERGEN_DATABASE_URL", "CONSUMERGEN_LOG_REDACTION_KEY"} <= secret_keys
    assert not secret_keys & set(docs["ConfigMap"]["data"])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        settings = load_settings()
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.health_host == "0.0.0.0"
    assert settings.outcomes_topic == "consumer-events.outcomes"
    assert settings.reply_topic == "consumer-events.replies"
    # The read API is reachable from other pods, so it needs its tokens: the daemon
    # would refuse to start otherwise (check_exposure), and they come from a file.
    assert settings.read_api_host == "0.0.0.0" and settings.read_api_token is None
    check_exposure(settings)
    assert settings.read_api_tokens_file is not None


def test_the_read_api_tokens_are_a_mounted_secret_file_and_the_producers_have_theirs() -> None:
    """Not from the daemon's environment (fixed until a restart) but from a Secret
    volume the kubelet updates: a token rotates without a restart."""
    docs = _documents()
    tokens_file = Path(docs["ConfigMap"]["data"]["CONSUMERGEN_READ_API_TOKENS_FILE"])
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [(name, mount)] = [(n, m) for n, m in mounts.items() if "secret" in volumes[n]]
    assert mount["readOnly"] is True and tokens_file.parent == Path(mount["mountPath"])
    secret = volumes[name]["secret"]
    tokens_secret = docs["Secret/consumergen-read-api"]
    assert secret["secretName"] == tokens_secret["metadata"]["name"]
    assert secret["items"] == [{"key": "tokens", "path": tokens_file.name}]
    data = tokens_secret["stringData"]
    accepted = [line for line in data["tokens"].splitlines() if line.strip()]
    assert data["CONSUMERGEN_READ_API_TOKEN"] in accepted  # what producers send is accepted
    # The daemons' envFrom Secret holds no read-API token (it would never rotate away).
    assert not any("READ_API_TOKEN" in key for key in docs["Secret"]["stringData"])
    assert {e.get("secretRef", {}).get("name") for e in container["envFrom"]} >= {"consumergen"}
    assert tokens_secret["metadata"]["name"] not in {
        e.get("secretRef", {}).get("name") for e in container["envFrom"]
    }


def test_the_network_policy_lets_in_producers_and_prometheus_only() -> None:
    docs = _documents()
    policy = docs["NetworkPolicy"]["spec"]
    daemon_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= daemon_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {}
    for rule in policy["ingress"]:
        [port] = rule["ports"]
        by_port[port["port"]] = rule["from"]
    assert set(by_port) == {"read-api", "http"}  # nothing else is let in
    # Producers: pods of the namespace (a podSelector alone) with the producer label.
    [producers] = by_port["read-api"]
    assert set(producers) == {"podSelector"}
    assert producers["podSelector"]["matchLabels"] == {"consumergen/producer": "true"}
    # /metrics: Prometheus' pods in its namespace, both selectors in one peer (an AND).
    [prometheus] = by_port["http"]
    assert set(prometheus) == {"namespaceSelector", "podSelector"}
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # The named ports are the container's.
    [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert set(by_port) == {p["name"] for p in container["ports"]}
