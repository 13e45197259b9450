"""The Helm chart renders, lints and produces valid Kubernetes objects the broker can run on.

Rendering and lint use Helm itself as a library (the ``helm-python-sdk`` wheel bundles
Helm v4's Go SDK; no cluster, no ``helm`` binary). Every rendered object is validated
against the Kubernetes JSON schemas for ``KUBE_VERSION`` from the ``kubernetes-validate``
wheel, in strict mode (unknown fields are errors). ServiceMonitor and PrometheusRule
(Prometheus Operator) and Certificate (cert-manager) are CRDs, not in those schemas: they
get a structural check instead.

TLS is on by default and the chart refuses to render without a certificate source, so
``_render`` names a TLS Secret unless the values say something about ``tls`` themselves;
``test_chart_defaults_refuse_to_render_without_a_certificate`` covers the bare defaults.

Beyond schema validity, the rendered wiring is checked against the broker itself: every
environment variable is one ``broker.settings`` declares, the TOML config file is accepted by
the broker's own loader, the policy ConfigMap loads to the same policy version as
``policies/``, and the PrometheusRule carries exactly ``deploy/prometheus/alerts.yaml``.
"""

from __future__ import annotations

import copy
import http.server
import os
import re
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from broker.policy import load_policy_dir
from broker.settings import CONFIG_ENV, SETTINGS, settings_from_file
from broker.tls.devca import DevCA

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "jit-broker"
KUBE_VERSION = "1.30"
RELEASE = "jit-broker"
NAMESPACE = "secrets"
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
}
TLS_SECRET = "jit-broker-tls"
SERVICE_HOST = f"jit-broker.{NAMESPACE}.svc"
VERIFIER_KEY = "old-key+0a1b2c3d+AVGjyLzLbXcgVVLK4J1RDsNsmMwUrQtiKSJwwrf8kIAx"


def _policy_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((REPO / "policies").glob("*.yaml"))}


def _everything_on() -> dict[str, Any]:
    """Values that switch on every optional template and branch."""
    return {
        "replicaCount": 3,
        "image": {"repository": "registry.example/jit-broker", "digest": "sha256:" + "a" * 64},
        "broker": {
            "trustedIssuers": [
                {
                    "issuer": "https://login.example.com",
                    "audience": "jit-broker",
                    "algorithms": ["RS256"],
                    "jwks_url": "https://login.example.com/.well-known/jwks.json",
                }
            ],
            "jwksCaSecret": "idp-ca",
            "extraEnv": [{"name": "BROKER_MAX_BODY_BYTES", "value": "32768"}],
        },
        "config": {"policy_reload_interval_seconds": 3, "ledger_max_queue": 20000},
        "vaultApi": {"enabled": True, "port": 8200},
        "tls": {
            "certManager": {"enabled": True, "issuerRef": {"name": "internal-ca"}},
            "clientCA": {"existingSecret": "mesh-ca"},
            "reloadIntervalSeconds": 30,
        },
        "database": {
            "url": "postgresql://ledger_writer:pw@db:5432/broker?sslmode=verify-full",
            "adminUrl": "postgresql://ledger_owner:pw@db:5432/broker?sslmode=verify-full",
            "caSecret": "ledger-ca",
        },
        "vault": {
            "approle": {"roleId": "role-123", "secretId": "secret-456"},
            "caSecret": "vault-ca",
            "tlsServerName": "vault.internal",
            "clientCertSecret": "broker-vault-client",
        },
        "checkpoint": {
            "privateKey": "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----\n",
            "verifierKeys": [VERIFIER_KEY],
        },
        "policies": {"files": _policy_files(), "rolloutOnChange": True},
        "webhooks": {"existingSecret": "jit-broker-webhooks"},
        "podAntiAffinity": "hard",
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9},
        "networkPolicy": {
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "platform"}}}],
            "egress": {
                "restrict": True,
                "rules": [
                    {
                        "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                        "ports": [{"port": 5432, "protocol": "TCP"}],
                    }
                ],
            },
        },
        "serviceMonitor": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "tls": {"clientCertSecret": "prometheus-client"},
        },
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": ["broker.example.com"],
        },
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "runbookBaseUrl": "https://git.example/jit-broker/blob/main/",
        },
    }


SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-on": _everything_on(),
    "three-replicas": {"replicaCount": 3},
    "kubernetes-auth": {"vault": {"authMethod": "kubernetes"}},
    "token-auth": {"vault": {"authMethod": "token", "token": {"value": "s.dev-token"}}},
    "tls-cert-manager": {
        "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "internal-ca"}}},
        "serviceMonitor": {"enabled": True},
    },
    "tls-mtls": {"tls": {"existingSecret": TLS_SECRET, "clientCA": {"existingSecret": "mesh-ca"}}},
    "tls-disabled": {"tls": {"disable": True}, "serviceMonitor": {"enabled": True}},
    "ingress-passthrough": {
        "ingress": {"enabled": True, "className": "nginx", "hosts": ["broker.example.com"]}
    },
    "ingress-reencrypt": {
        "vaultApi": {"enabled": True},
        "ingress": {
            "enabled": True,
            "mode": "reencrypt",
            "servicePort": "vault-api",
            "hosts": ["vault.example.com"],
            "tls": [{"secretName": "edge-tls", "hosts": ["vault.example.com"]}],
        },
    },
}


def _with_tls_source(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` plus a TLS Secret, unless they decide about ``tls`` themselves."""
    if "tls" in values:
        return values
    return {**values, "tls": {"existingSecret": TLS_SECRET}}


def _render_all(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        manifests: dict[str, str] = chart.render(
            _with_tls_source(values), name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return manifests


def _notes(values: dict[str, Any]) -> str:
    return next(t for p, t in _render_all(values).items() if p.endswith("NOTES.txt"))


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Render the chart as an install; every non-empty object, NOTES.txt left out."""
    manifests = _render_all(values)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def _broker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["broker"]
    return dict(containers[0])


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _mount_of(objects: list[dict[str, Any]], file_path: str) -> dict[str, Any]:
    """The volume mounted at the directory holding ``file_path`` in the broker container."""
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _broker_container(objects)["volumeMounts"]}
    directory = str(Path(file_path).parent)
    assert directory in mounts, f"nothing mounted at {directory}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    return dict(volumes[mounts[directory]])


def _broker_env_names() -> set[str]:
    """Every BROKER_*/VAULT_* variable the broker reads: the declared ones, and the file's."""
    return {d.env for d in SETTINGS} | {CONFIG_ENV}


def _validate_crd(obj: dict[str, Any]) -> None:
    """Structural check of the Prometheus Operator objects (no schema bundled for them)."""
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, set(obj)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, set(spec)
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] and endpoint["path"].startswith("/")
            assert set(endpoint) <= {
                "port",
                "path",
                "interval",
                "scrapeTimeout",
                "scheme",
                "tlsConfig",
            }
            if "tlsConfig" in endpoint:
                assert endpoint["scheme"] == "https"
                assert set(endpoint["tlsConfig"]) <= {"serverName", "ca", "cert", "keySecret"}
                assert endpoint["tlsConfig"]["ca"]["secret"].keys() == {"name", "key"}
    elif obj["kind"] == "Certificate":
        assert set(spec) <= {
            "secretName",
            "secretTemplate",
            "commonName",
            "dnsNames",
            "duration",
            "renewBefore",
            "privateKey",
            "usages",
            "issuerRef",
        }, set(spec)
        assert spec["secretName"] and spec["dnsNames"] and spec["issuerRef"]["name"]
        assert spec["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer")
        assert re.fullmatch(r"([0-9]+h)+", spec["duration"])
        assert "server auth" in spec["usages"]
    else:
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert rule["expr"] and ("alert" in rule) != ("record" in rule)


def _validate(objects: list[dict[str, Any]]) -> list[str]:
    """Validate every object; return "Kind/name" of each validated one."""
    seen = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            _validate_crd(obj)
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        seen.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return seen


# --- lint and schema ---------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_has_no_errors(scenario: str) -> None:
    values = _with_tls_source(SCENARIOS[scenario])
    report = helm.lint(CHART, values, kube_version=f"v{KUBE_VERSION}.0")
    errors = [m for m in report["messages"] if m["severity"] >= 3] + report["errors"]
    assert not errors, errors
    # Warnings are reported (in pytest's warnings summary), not fatal. None exist today.
    for m in report["messages"]:
        if m["severity"] == 2:
            warnings.warn(f"helm lint ({scenario}): {m['path']}: {m['error']}", stacklevel=1)


def test_values_schema_rejects_a_bad_value() -> None:
    with pytest.raises(helm.HelmValuesError, match="replicaCount"):
        _render({"replicaCount": "three"})
    report = helm.lint(CHART, {"replicaCount": "three"})
    assert any("replicaCount" in e for e in report["errors"]), report


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"vault": {"authMethod": "userpass"}}, "authMethod"),
        ({"replicaCount": 0}, "replicaCount"),
        ({"podAntiAffinity": "sometimes"}, "podAntiAffinity"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"config": {"vault_token": "s.leak"}}, "config"),
        ({"policies": {"files": {"roles.json": "{}"}}}, "roles.json"),
        ({"checkpoint": {"verifierKeys": ["not a key"]}}, "verifierKeys"),
        ({"replicaCount": 2, "replicas": 3}, "replicas"),
        ({"tls": {"enabled": True}}, "enabled"),  # the switch is tls.disable
        ({"tls": {"certManager": {"enabled": True}}}, "issuerRef"),
        ({"tls": {"certManager": {"issuerRef": {"kind": "CA"}}}}, "kind"),
        ({"tls": {"existingSecret": "Not_A_Name"}}, "existingSecret"),
        ({"tls": {"reloadIntervalSeconds": 0}}, "reloadIntervalSeconds"),
        ({"ingress": {"mode": "terminate"}}, "mode"),
        ({"ingress": {"hosts": ["https://broker.example.com"]}}, "hosts"),
        ({"vault": {"addr": "https://v", "authMethod": "token", "caKey": ""}}, "caKey"),
        ({"database": {"synchronousStandby": "no"}}, "synchronousStandby"),
        ({"broker": {"workers": 0}}, "workers"),
    ],
)
def test_values_schema_rejects_other_mistakes(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        _render(values)


# --- every rendered object is valid Kubernetes ------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_validate_against_kubernetes_schemas(scenario: str) -> None:
    seen = _validate(_render(SCENARIOS[scenario]))
    assert "Deployment/jit-broker" in seen and "Service/jit-broker" in seen


def test_kubernetes_validation_catches_an_invalid_object() -> None:
    """The negative control: strict validation rejects a misspelt field and a wrong type."""
    deployment = _one(_render({}), "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBE_VERSION, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBE_VERSION, strict=True)


def test_everything_on_renders_every_template() -> None:
    kinds = sorted(o["kind"] for o in _render(SCENARIOS["everything-on"]))
    assert kinds == sorted(
        [
            "Certificate",  # cert-manager: the serving certificate
            "ConfigMap",  # policies
            "ConfigMap",  # broker.toml
            "Deployment",
            "HorizontalPodAutoscaler",
            "Ingress",
            "Job",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Secret",  # database (hook)
            "Secret",  # vault approle
            "Secret",  # checkpoint key
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


def test_defaults_create_no_secret_and_no_crd_objects() -> None:
    kinds = {o["kind"] for o in _render({})}
    assert "Secret" not in kinds  # secrets come from existingSecret in production
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler"}


# --- the Deployment -----------------------------------------------------------------------


def test_replica_count_and_anti_affinity() -> None:
    objects = _render({"replicaCount": 3})
    deployment = _one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    hard = _one(_render({"podAntiAffinity": "hard"}), "Deployment")
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution"
        in (hard["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"])
    )
    # With the autoscaler on, the HPA owns the replica count.
    scaled = _render({"autoscaling": {"enabled": True}})
    assert "replicas" not in _one(scaled, "Deployment")["spec"]
    assert _one(scaled, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 2


def test_workers_per_pod_reach_the_broker() -> None:
    """``broker.workers`` is ``BROKER_WORKERS`` (default 1: no supervisor process)."""
    assert _env(_broker_container(_render({})))["BROKER_WORKERS"]["value"] == "1"
    env = _env(_broker_container(_render({"broker": {"workers": 4}})))
    assert env["BROKER_WORKERS"]["value"] == "4"


def test_pod_is_locked_down() -> None:
    objects = _render({})
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's numeric user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = _broker_container(objects)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert _mount_of(objects, "/tmp/x")["emptyDir"]  # the writable /tmp
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {
            "path": "/v1/health",
            "port": "http",
            "scheme": "HTTPS",
        }
    # Liveness asks only whether the process answers: a dependency outage takes replicas
    # out of the Service (readiness) but must not restart them all.
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/v1/health/live",
        "port": "http",
        "scheme": "HTTPS",
    }
    live, ready = container["livenessProbe"], container["readinessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > 3 * (
        ready["periodSeconds"] * ready["failureThreshold"]
    )
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["args"] == ["serve"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_env_names_are_ones_the_broker_reads(scenario: str) -> None:
    known = _broker_env_names()
    assert {"BROKER_DATABASE_URL", "VAULT_ADDR", "BROKER_CONFIG"} <= known  # parser sanity
    objects = _render(SCENARIOS[scenario])
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            unknown = {e["name"] for e in container["env"]} - known
            assert not unknown, f"{obj['kind']}: the broker reads no {sorted(unknown)}"
    # No secret value in plain env: DSNs and Vault credentials come from secretKeyRef.
    env = _env(_broker_container(objects))
    for name in ("BROKER_DATABASE_URL", "VAULT_ROLE_ID", "VAULT_TOKEN", "BROKER_WEBHOOK_URLS"):
        if name in env:
            assert "secretKeyRef" in env[name]["valueFrom"], name


def test_file_paths_in_env_point_at_mounted_volumes() -> None:
    objects = _render(SCENARIOS["everything-on"])
    env = _env(_broker_container(objects))
    key = _mount_of(objects, env["BROKER_CHECKPOINT_KEY"]["value"])
    assert key["secret"]["items"] == [{"key": "checkpoint.key", "path": "checkpoint.key"}]
    secret_id = _mount_of(objects, env["VAULT_SECRET_ID_FILE"]["value"])
    assert (
        secret_id["secret"]["items"][0]["path"] == Path(env["VAULT_SECRET_ID_FILE"]["value"]).name
    )
    assert _mount_of(objects, env["BROKER_CHECKPOINT_WITNESS"]["value"])["emptyDir"]
    assert (
        _mount_of(objects, env["BROKER_CONFIG"]["value"])["configMap"]["name"]
        == "jit-broker-config"
    )
    policies = _mount_of(objects, env["BROKER_POLICIES_DIR"]["value"] + "/roles.yaml")
    assert policies["configMap"]["name"] == "jit-broker-policies"
    assert env["BROKER_CHECKPOINT_VERIFIER_KEYS"]["value"] == VERIFIER_KEY
    assert env["BROKER_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    k8s = _render(SCENARIOS["kubernetes-auth"])
    k8s_env = _env(_broker_container(k8s))
    assert k8s_env["VAULT_AUTH_METHOD"]["value"] == "kubernetes"
    projected = _mount_of(k8s, k8s_env["VAULT_K8S_TOKEN_PATH"]["value"])["projected"]
    token = projected["sources"][0]["serviceAccountToken"]
    assert token["path"] == "token" and token["audience"] == "vault"
    assert "VAULT_ROLE_ID" not in k8s_env and "VAULT_TOKEN" not in k8s_env


def test_vault_api_port_is_optional() -> None:
    off = _render({})
    assert "BROKER_VAULT_API_PORT" not in _env(_broker_container(off))
    assert [p["name"] for p in _one(off, "Service")["spec"]["ports"]] == ["http"]
    on = _render({"vaultApi": {"enabled": True, "port": 8300}, "service": {"vaultApiPort": 8201}})
    container = _broker_container(on)
    assert _env(container)["BROKER_VAULT_API_PORT"]["value"] == "8300"
    assert {"name": "vault-api", "containerPort": 8300, "protocol": "TCP"} in container["ports"]
    ports = {p["name"]: p for p in _one(on, "Service")["spec"]["ports"]}
    assert ports["vault-api"]["port"] == 8201 and ports["vault-api"]["targetPort"] == "vault-api"
    netpol_ports = _one(on, "NetworkPolicy")["spec"]["ingress"][0]["ports"]
    assert {"port": "vault-api", "protocol": "TCP"} in netpol_ports


def test_a_synchronous_standby_is_required_unless_the_values_say_not() -> None:
    required = _env(_broker_container(_render({})))["BROKER_LEDGER_SYNCHRONOUS_STANDBY"]
    assert required["value"] == "required"
    single = _render({"database": {"synchronousStandby": "not-required"}})
    assert _env(_broker_container(single))["BROKER_LEDGER_SYNCHRONOUS_STANDBY"]["value"] == (
        "not-required"
    )


# --- what the broker gets from ConfigMaps -----------------------------------------------------


def test_policy_configmap_loads_to_the_same_policy_version(tmp_path: Path) -> None:
    objects = _render({"policies": {"files": _policy_files()}})
    configmap = next(o for o in objects if o["metadata"]["name"] == "jit-broker-policies")
    for name, body in configmap["data"].items():
        (tmp_path / name).write_text(body)
    assert load_policy_dir(tmp_path).version == load_policy_dir(REPO / "policies").version


def test_policy_checksum_rolls_pods_only_when_asked() -> None:
    files = _policy_files()
    changed = dict(files, **{"roles.yaml": files["roles.yaml"] + "\n# changed\n"})

    def annotations(values: dict[str, Any]) -> dict[str, str]:
        pod = _one(_render(values), "Deployment")["spec"]["template"]["metadata"]
        return dict(pod.get("annotations", {}))

    hot = annotations({"policies": {"files": files}})
    assert "checksum/policies" not in hot  # default: the broker's hot reload, no restart
    before = annotations({"policies": {"files": files, "rolloutOnChange": True}})
    after = annotations({"policies": {"files": changed, "rolloutOnChange": True}})
    assert before["checksum/policies"] != after["checksum/policies"]


def test_config_file_is_accepted_by_the_broker(tmp_path: Path) -> None:
    config = {
        "policy_reload_interval_seconds": 2.5,
        "ledger_max_queue": 20000,
        "ledger_origin": 'example.com/ledger "prod"',
        "webhook_max_attempts": 3,
    }
    objects = _render({"config": config})
    configmap = next(o for o in objects if o["metadata"]["name"] == "jit-broker-config")
    path = tmp_path / "broker.toml"
    path.write_text(configmap["data"]["broker.toml"])
    settings = settings_from_file(path)
    assert settings.policy_reload_interval_seconds == 2.5
    assert settings.ledger_max_queue == 20000
    assert settings.ledger_origin == 'example.com/ledger "prod"'
    assert settings.webhook_max_attempts == 3
    env = _env(_broker_container(objects))
    assert env["BROKER_CONFIG"]["value"] == "/etc/jit-broker/config/broker.toml"
    assert "BROKER_CONFIG" not in _env(_broker_container(_render({})))


# --- hooks, secrets, monitoring -----------------------------------------------------------


def test_migration_job_runs_broker_migrate_before_install_and_upgrade() -> None:
    objects = _render(SCENARIOS["everything-on"])
    job = _one(objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate"]
    env = _env(container)
    assert {"BROKER_DATABASE_URL", "BROKER_ADMIN_DATABASE_URL"} <= set(env)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Hooks run before the release's objects exist: the DSN Secret the chart makes must be
    # a hook too (earlier weight), and the Job must not need the chart's ServiceAccount.
    db_secret = next(o for o in objects if o["metadata"]["name"] == "jit-broker-database")
    assert int(db_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"]
    )
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    assert not any(o["kind"] == "Job" for o in _render({"migrations": {"enabled": False}}))


def test_existing_secrets_are_referenced_not_created() -> None:
    objects = _render(
        {
            "database": {"existingSecret": "ledger-dsn"},
            "vault": {"approle": {"existingSecret": "broker-approle"}},
            "checkpoint": {"existingSecret": "broker-signing-key"},
        }
    )
    assert not any(o["kind"] == "Secret" for o in objects)
    env = _env(_broker_container(objects))
    assert env["BROKER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "ledger-dsn"
    assert env["VAULT_ROLE_ID"]["valueFrom"]["secretKeyRef"]["name"] == "broker-approle"
    assert _mount_of(objects, env["BROKER_CHECKPOINT_KEY"]["value"])["secret"]["secretName"] == (
        "broker-signing-key"
    )


def _alerts_spec() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yaml").read_text()))


def test_prometheus_rule_carries_the_alert_file() -> None:
    rule = _one(_render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["spec"] == _alerts_spec()
    based = _one(_render(SCENARIOS["everything-on"]), "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in based["spec"]["groups"] for r in g["rules"]]
    assert urls and all(
        u.startswith("https://git.example/jit-broker/blob/main/docs/operations.md#") for u in urls
    )
    assert based["metadata"]["labels"]["release"] == "prometheus"
    # The rules' own templating reaches Prometheus untouched.
    assert "{{ $labels.instance }}" in yaml.safe_dump(rule["spec"])


def test_service_monitor_scrapes_metrics_on_the_api_port() -> None:
    objects = _render({"serviceMonitor": {"enabled": True}})
    monitor = _one(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "http",
            "path": "/metrics",
            "interval": "30s",
            "scrapeTimeout": "10s",
            "scheme": "https",
            "tlsConfig": {
                "serverName": SERVICE_HOST,
                "ca": {"secret": {"name": TLS_SECRET, "key": "ca.crt"}},
            },
        }
    ]
    service = _one(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_pdb_and_network_policy_select_the_broker_pods() -> None:
    objects = _render(SCENARIOS["everything-on"])
    selector = _one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert _one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    netpol = _one(objects, "NetworkPolicy")["spec"]
    assert netpol["podSelector"]["matchLabels"] == selector
    assert netpol["policyTypes"] == ["Ingress", "Egress"]
    dns = netpol["egress"][0]["ports"]
    assert {"port": 53, "protocol": "UDP"} in dns
    assert netpol["egress"][1]["ports"] == [{"port": 5432, "protocol": "TCP"}]


def _iter_strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _iter_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _iter_strings(v)
    elif isinstance(value, str):
        yield value


def test_secret_values_appear_only_in_secrets() -> None:
    """Inline values (test clusters) land in Secret objects, never in a pod spec or ConfigMap."""
    objects = _render(SCENARIOS["everything-on"])
    secrets = ("pw@db", "role-123", "secret-456", "BEGIN PRIVATE KEY")
    for obj in objects:
        if obj["kind"] == "Secret":
            continue
        for text in _iter_strings(obj):
            for secret in secrets:
                assert secret not in text, f"{obj['kind']}/{obj['metadata']['name']}"


# --- TLS (issue 12) -----------------------------------------------------------------------


def test_chart_defaults_refuse_to_render_without_a_certificate() -> None:
    """Plaintext is a decision: bare defaults fail the render (install, upgrade, template),
    naming the fix. ``helm lint`` runs templates in lint mode, where ``fail`` only logs, so
    the bare chart still lints clean (chart repositories lint it with its defaults)."""
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as failed:
        chart.render({}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert "TLS is on (the default) but has no certificate" in str(failed.value)
    for hint in ("tls.existingSecret", "tls.certManager.enabled", "tls.disable=true"):
        assert hint in str(failed.value)
    report = helm.lint(CHART, {})
    assert not report["errors"] and all(m["severity"] < 3 for m in report["messages"])


@pytest.mark.parametrize(
    ("tls", "extra", "message"),
    [
        (
            {
                "existingSecret": TLS_SECRET,
                "certManager": {"enabled": True, "issuerRef": {"name": "ca"}},
            },
            {},
            "both set",
        ),
        ({"disable": True, "existingSecret": TLS_SECRET}, {}, "choose one"),
        ({"disable": True}, {"ingress": {"enabled": True, "hosts": ["b.example"]}}, "plaintext"),
        ({"existingSecret": TLS_SECRET}, {"ingress": {"enabled": True}}, "ingress.hosts"),
    ],
)
def test_contradictory_tls_values_fail_the_render(
    tls: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        _render({"tls": tls, **extra})


def _volume_files(objects: list[dict[str, Any]], file_path: str) -> tuple[str, str]:
    """(Secret name, Secret key) behind ``file_path`` in the broker container."""
    volume = _mount_of(objects, file_path)["secret"]
    key = next(i["key"] for i in volume["items"] if i["path"] == Path(file_path).name)
    return volume["secretName"], key


def test_serving_certificate_is_a_mounted_secret_the_env_points_at() -> None:
    objects = _render({})
    container = _broker_container(objects)
    env = _env(container)
    assert _volume_files(objects, env["BROKER_TLS_CERT_FILE"]["value"]) == (TLS_SECRET, "tls.crt")
    assert _volume_files(objects, env["BROKER_TLS_KEY_FILE"]["value"]) == (TLS_SECRET, "tls.key")
    assert "BROKER_TLS_DISABLE" not in env and "BROKER_TLS_CLIENT_CA_FILE" not in env
    assert "BROKER_TLS_RELOAD_INTERVAL" not in env  # the broker's default
    # Directories, never subPath: the kubelet then updates the files in place on renewal.
    assert all("subPath" not in m for m in container["volumeMounts"])
    tls_mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert tls_mount["readOnly"] is True
    # Service ports unchanged; appProtocol says the port speaks TLS.
    ports = _one(objects, "Service")["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"], p["appProtocol"]) for p in ports] == [
        ("http", 8080, "http", "https")
    ]
    notes = _notes({})
    assert f"https://{SERVICE_HOST}:8080" in notes and "WARNING: tls.disable" not in notes
    reload = _env(
        _broker_container(_render({"tls": {"existingSecret": "x", "reloadIntervalSeconds": 15}}))
    )
    assert reload["BROKER_TLS_RELOAD_INTERVAL"]["value"] == "15"


def test_cert_manager_certificate_feeds_the_mounted_secret() -> None:
    objects = _render(SCENARIOS["everything-on"])
    certificate = _one(objects, "Certificate")["spec"]
    env = _env(_broker_container(objects))
    secret, _ = _volume_files(objects, env["BROKER_TLS_CERT_FILE"]["value"])
    assert certificate["secretName"] == secret == "jit-broker-tls"
    assert certificate["issuerRef"] == {
        "name": "internal-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    # The Service's names, and the Ingress host the passthrough hands the stream to.
    assert {SERVICE_HOST, f"{SERVICE_HOST}.cluster.local", "broker.example.com"} <= set(
        certificate["dnsNames"]
    )
    assert certificate["privateKey"]["rotationPolicy"] == "Always"
    assert "client auth" in certificate["usages"]  # mTLS is on: the probes present it
    plain = _one(_render(SCENARIOS["tls-cert-manager"]), "Certificate")["spec"]
    assert "client auth" not in plain["usages"]
    assert not any(o["kind"] == "Certificate" for o in _render({}))


def test_tls_disable_serves_plain_http_and_says_so() -> None:
    values = SCENARIOS["tls-disabled"]
    objects = _render(values)
    container = _broker_container(objects)
    env = _env(container)
    assert env["BROKER_TLS_DISABLE"]["value"] == "true"
    assert not {n for n in env if n.startswith("BROKER_TLS_") and n != "BROKER_TLS_DISABLE"}
    assert "tls" not in {m["name"] for m in container["volumeMounts"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/health", "port": "http"}
    assert "appProtocol" not in _one(objects, "Service")["spec"]["ports"][0]
    endpoint = _one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    assert "scheme" not in endpoint and "tlsConfig" not in endpoint
    notes = _notes(values)
    assert "WARNING: tls.disable is true" in notes and "PLAIN HTTP" in notes
    assert f"http://{RELEASE}.{NAMESPACE}.svc:8080" in notes


def test_mtls_mounts_the_client_ca_and_probes_present_a_certificate() -> None:
    objects = _render(SCENARIOS["tls-mtls"])
    container = _broker_container(objects)
    env = _env(container)
    assert _volume_files(objects, env["BROKER_TLS_CLIENT_CA_FILE"]["value"]) == (
        "mesh-ca",
        "ca.crt",
    )
    for probe, path in (
        ("startupProbe", "/v1/health"),
        ("readinessProbe", "/v1/health"),
        ("livenessProbe", "/v1/health/live"),
    ):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"] and f'{path}" %' in command[2], probe
        assert "httpGet" not in container[probe]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_mtls_probe_command_passes_a_real_handshake_and_fails_on_503(tmp_path: Path) -> None:
    """The exec probe, run as the kubelet would, against a server that requires client certs."""
    ca = DevCA.load_or_create(tmp_path / "ca")
    server_cert = ca.issue("server", ["127.0.0.1"])
    # The broker's certificate must be usable as a client certificate (cert-manager gets the
    # "client auth" usage); devca issues that as a separate client certificate.
    client_cert = ca.issue("client", ["jit-broker"], client=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert.cert_path, server_cert.key_path)
    context.load_verify_locations(ca.cert_path)
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    command = _broker_container(_render(SCENARIOS["tls-mtls"]))["readinessProbe"]["exec"]
    argv = [sys.executable, *command["command"][1:]]

    def probe(cert: Path, key: Path) -> int:
        env = dict(
            os.environ,
            BROKER_PORT=str(server.server_address[1]),
            BROKER_TLS_CERT_FILE=str(cert),
            BROKER_TLS_KEY_FILE=str(key),
        )
        return subprocess.run(argv, env=env, capture_output=True, timeout=20).returncode

    try:
        assert probe(client_cert.cert_path, client_cert.key_path) == 0
        # A certificate the client CA does not trust for clients is refused in the handshake.
        assert probe(server_cert.cert_path, server_cert.key_path) != 0
        _Health.status = 503
        assert probe(client_cert.cert_path, client_cert.key_path) != 0
    finally:
        _Health.status = 200
        server.shutdown()
        server.server_close()


def test_outbound_cas_are_mounted_files_the_env_points_at() -> None:
    objects = _render(SCENARIOS["everything-on"])
    env = _env(_broker_container(objects))
    expected = {
        "VAULT_CACERT": ("vault-ca", "ca.crt"),
        "VAULT_CLIENT_CERT": ("broker-vault-client", "tls.crt"),
        "VAULT_CLIENT_KEY": ("broker-vault-client", "tls.key"),
        "BROKER_DATABASE_SSLROOTCERT": ("ledger-ca", "ca.crt"),
        "BROKER_JWKS_CA_FILE": ("idp-ca", "ca.crt"),
    }
    for name, source in expected.items():
        assert _volume_files(objects, env[name]["value"]) == source, name
    assert env["VAULT_TLS_SERVER_NAME"]["value"] == "vault.internal"
    # The migration Job connects to the same database: it verifies it the same way.
    job = _one(objects, "Job")["spec"]["template"]["spec"]
    job_env = _env(job["containers"][0])
    ca_path = job_env["BROKER_DATABASE_SSLROOTCERT"]["value"]
    assert ca_path == env["BROKER_DATABASE_SSLROOTCERT"]["value"]
    mount = next(m for m in job["containers"][0]["volumeMounts"] if m["name"] == "database-ca")
    assert mount["mountPath"] == str(Path(ca_path).parent) and "subPath" not in mount
    volume = next(v for v in job["volumes"] if v["name"] == "database-ca")
    assert volume["secret"]["secretName"] == "ledger-ca"
    # None of them unless asked for.
    plain = _env(_broker_container(_render({})))
    assert not set(expected) & set(plain) and "VAULT_TLS_SERVER_NAME" not in plain


def test_service_monitor_verifies_the_broker_and_presents_a_client_certificate() -> None:
    endpoint = _one(_render(SCENARIOS["everything-on"]), "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "serverName": SERVICE_HOST,
        "ca": {"secret": {"name": "jit-broker-tls", "key": "ca.crt"}},
        "cert": {"secret": {"name": "prometheus-client", "key": "tls.crt"}},
        "keySecret": {"name": "prometheus-client", "key": "tls.key"},
    }


def test_ingress_passes_tls_through_or_re_encrypts() -> None:
    passthrough = _one(_render(SCENARIOS["ingress-passthrough"]), "Ingress")
    assert passthrough["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/ssl-passthrough": "true"
    }
    assert passthrough["spec"]["ingressClassName"] == "nginx"
    assert "tls" not in passthrough["spec"]  # the broker's own certificate reaches the client
    rule = passthrough["spec"]["rules"][0]
    assert rule["host"] == "broker.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": "jit-broker",
        "port": {"name": "http"},
    }

    reencrypt = _one(_render(SCENARIOS["ingress-reencrypt"]), "Ingress")
    assert reencrypt["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
        "nginx.ingress.kubernetes.io/proxy-ssl-verify": "on",
        "nginx.ingress.kubernetes.io/proxy-ssl-secret": f"{NAMESPACE}/{TLS_SECRET}",
        "nginx.ingress.kubernetes.io/proxy-ssl-name": SERVICE_HOST,
        "nginx.ingress.kubernetes.io/proxy-ssl-server-name": "on",
    }
    assert reencrypt["spec"]["tls"] == [{"secretName": "edge-tls", "hosts": ["vault.example.com"]}]
    backend = reencrypt["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["port"] == {"name": "vault-api"}

    # Your annotations win (another controller, or a different backend CA).
    custom = _one(
        _render(
            {
                "ingress": {
                    "enabled": True,
                    "mode": "reencrypt",
                    "hosts": ["b.example"],
                    "reencrypt": {"backendCASecret": "broker-ca"},
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-ssl-verify": "off"},
                }
            }
        ),
        "Ingress",
    )["metadata"]["annotations"]
    assert custom["nginx.ingress.kubernetes.io/proxy-ssl-verify"] == "off"
    assert custom["nginx.ingress.kubernetes.io/proxy-ssl-secret"] == f"{NAMESPACE}/broker-ca"
