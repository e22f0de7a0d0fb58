"""The chart without a cluster: lint, schema, generated files in sync, alert rules."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from crucible.api.crd import render_crds
from crucible.devcluster.binaries import find_binaries
from crucible.metrics.dashboards import render_dashboards
from tests.conftest import ROOT

CHART = ROOT / "charts" / "crucible"
KUBE_VERSION = "--kube-version=1.34.4"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_binaries().helm), *args], capture_output=True, text=True, timeout=120, check=check
    )


def rendered(*sets: str) -> list[dict]:
    out = helm(
        "template",
        "t",
        str(CHART),
        KUBE_VERSION,
        "--namespace",
        "crucible-system",
        *[a for s in sets for a in ("--set", s)],
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_helm_lint_strict() -> None:
    result = helm("lint", "--strict", str(CHART), KUBE_VERSION, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_crds_are_the_generated_ones() -> None:
    for name, text in render_crds().items():
        assert (CHART / "crds" / name).read_text() == text, f"run `crucible crds`: {name}"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(render_crds())


def test_committed_dashboards_match_the_code() -> None:
    for name, text in render_dashboards().items():
        assert (CHART / "dashboards" / name).read_text() == text, "run `crucible dashboards`"
    assert sorted(p.name for p in (CHART / "dashboards").iterdir()) == sorted(render_dashboards())


def test_dashboards_become_sidecar_configmaps() -> None:
    configmaps = [d for d in rendered() if d["kind"] == "ConfigMap"]
    assert len(configmaps) == len(render_dashboards())
    for cm in configmaps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = cm["data"].items()
        assert render_dashboards()[name].rstrip("\n") == text


def test_operator_deployment_is_hardened() -> None:
    (deployment,) = [d for d in rendered() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert container["args"] == ["operator", "--all-namespaces"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CRUCIBLE_MERGE_IMAGE"] == "ghcr.io/crucible-dev/crucible-merge:0.1.0"


def test_namespaced_mode_grants_roles_only_where_watched() -> None:
    docs = rendered("clusterWide=false", "watchNamespaces={team-a,team-b}")
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    # Cluster-wide only what kopf reads (Namespaces and CRDs) and the reviews of the
    # workloads' tokens.
    assert [r["rules"] for r in cluster_roles] == [
        [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": ["authentication.k8s.io"],
                "resources": ["tokenreviews"],
                "verbs": ["create"],
            },
        ]
    ]
    roles = [
        d
        for d in docs
        if d["kind"] == "Role"
        and not d["metadata"]["name"].endswith(("-leader-election", "-reports"))
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "operator",
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_rbac_has_no_wildcards_and_no_secrets() -> None:
    (role,) = [d for d in rendered() if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]
        # Workloads push their reports: the operator makes no identity or RBAC for them.
        assert not {"serviceaccounts", "roles", "rolebindings"} & set(rule["resources"]), rule


def test_the_report_endpoint_has_its_certificate_service_and_settings() -> None:
    docs = rendered()
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["CRUCIBLE_REPORT_URL"]["value"] == "https://t-crucible-reports.crucible-system.svc:8443"
    )
    assert env["CRUCIBLE_REPORT_SERVICE"]["value"] == "crucible-system/t-crucible-reports"
    assert env["CRUCIBLE_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "reports-tls"]
    assert env["CRUCIBLE_REPORT_TLS_DIR"]["value"] == mount["mountPath"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "reports-tls"]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    # The serving certificate is signed by the CA the workloads get, for the Service's names.
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    served = x509.load_pem_x509_certificate(data["tls.crt"])
    served.verify_directly_issued_by(ca)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "t-crucible-reports.crucible-system.svc" in names.get_values_for_type(x509.DNSName)
    (service,) = [d for d in docs if d["kind"] == "Service" and "reports" in d["metadata"]["name"]]
    assert "selector" not in service["spec"]  # the active replica writes its EndpointSlice
    (role,) = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-reports")
    ]
    slices = [r for r in role["rules"] if r["resources"] == ["endpointslices"]]
    assert {"resourceNames": ["t-crucible-reports"], "verbs": ["get", "patch"]}.items() <= (
        slices[-1].items()
    )


def test_cert_manager_makes_the_report_certificate_instead() -> None:
    docs = rendered("reports.certManager.enabled=true")
    assert not [d for d in docs if d["kind"] == "Secret"]
    (issuer,) = [d for d in docs if d["kind"] == "Issuer"]
    (certificate,) = [d for d in docs if d["kind"] == "Certificate"]
    assert certificate["spec"]["secretName"] == "t-crucible-reports-tls"
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    docs = rendered(
        "reports.certManager.enabled=true",
        "reports.certManager.issuerRef.kind=ClusterIssuer",
        "reports.certManager.issuerRef.name=corp-ca",
    )
    assert not [d for d in docs if d["kind"] == "Issuer"]
    (certificate,) = [d for d in docs if d["kind"] == "Certificate"]
    assert certificate["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}


@pytest.mark.parametrize(
    ("setting", "group", "resource", "verb"),
    [
        ("kserve.enabled", "serving.kserve.io", "llminferenceservices", "update"),
        ("jobset.enabled", "jobset.x-k8s.io", "jobsets", "create"),
        ("kubeflowTrainer.enabled", "trainer.kubeflow.org", "trainjobs", "create"),
    ],
)
def test_a_runtimes_rights_only_when_enabled(
    setting: str, group: str, resource: str, verb: str
) -> None:
    def rules(*sets: str) -> list[dict]:
        (role,) = [d for d in rendered(*sets) if d["kind"] == "ClusterRole"]
        return [r for r in role["rules"] if group in r["apiGroups"]]

    assert rules() == []
    (rule,) = rules(f"{setting}=true")
    assert rule["resources"] == [resource]
    assert "create" in rule["verbs"] and verb in rule["verbs"]


def test_the_trainer_runtime_reaches_the_operator() -> None:
    def env(*sets: str) -> dict[str, str]:
        (deployment,) = [d for d in rendered(*sets) if d["kind"] == "Deployment"]
        return {
            e["name"]: e.get("value")
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }

    assert env()["CRUCIBLE_TRAINER_RUNTIME"] == "torch-distributed"
    assert env("kubeflowTrainer.runtime=torch-fsdp")["CRUCIBLE_TRAINER_RUNTIME"] == "torch-fsdp"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("workloads.gpuResource=nvidia gpu", "/workloads/gpuResource"),
        ("metrics.port=0", "/metrics/port"),
        ("modelStore.pvc=Models", "/modelStore/pvc"),
        ("kubeflowTrainer.runtime=Torch Distributed", "/kubeflowTrainer/runtime"),
        ("unknownKey=1", "unknownKey"),
    ],
)
def test_values_schema_rejects_mistakes(setting: str, message: str) -> None:
    result = helm("template", "t", str(CHART), KUBE_VERSION, "--set", setting, check=False)
    assert result.returncode != 0 and message in result.stderr


def test_required_settings_fail_with_the_fix() -> None:
    result = helm(
        "template", "t", str(CHART), KUBE_VERSION, "--set", "clusterWide=false", check=False
    )
    assert "watchNamespaces: list the namespaces to watch" in result.stderr
    result = helm(
        "template", "t", str(CHART), KUBE_VERSION, "--set", "postgres.enabled=true", check=False
    )
    assert "postgres.passwordSecret: name a Secret" in result.stderr


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: run hack/setup.sh (Debian's prometheus package)"
    return path


def test_alert_rules_are_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(CHART / "rules" / "crucible-alerts.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout


def test_alerts_fire_when_they_should() -> None:
    tests = Path(__file__).with_name("alerts-test.yaml")
    result = subprocess.run(
        [promtool(), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tests.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_replicas_elect_a_leader_on_their_own_lease() -> None:
    docs = rendered()
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CRUCIBLE_LEADER_ELECTION_NAMESPACE"]["value"] == "crucible-system"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (role,) = [d for d in docs if d["kind"] == "Role" and "leader" in d["metadata"]["name"]]
    assert role["metadata"]["namespace"] == "crucible-system"
    # Only Leases, and only its own may be read or renewed.
    assert {g for rule in role["rules"] for g in rule["apiGroups"]} == {"coordination.k8s.io"}
    renew = next(rule for rule in role["rules"] if "update" in rule["verbs"])
    assert renew["resourceNames"] == [env["CRUCIBLE_LEADER_ELECTION_LEASE"]["value"]]
    # Two replicas that would both reconcile are refused.
    refused = helm(
        "template",
        "t",
        str(CHART),
        KUBE_VERSION,
        "--set",
        "leaderElection.enabled=false",
        check=False,
    )
    assert refused.returncode != 0 and "replicaCount > 1 needs leaderElection" in refused.stderr
    single = rendered("leaderElection.enabled=false", "replicaCount=1")
    assert not [d for d in single if d["kind"] == "Role" and "leader" in d["metadata"]["name"]]
