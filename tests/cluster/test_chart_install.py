"""The chart on the real control plane: server-side dry-run, helm install, and the operator
acting with exactly the chart's RBAC."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible.api.kinds import KINDS
from crucible.devcluster.cluster import LocalCluster
from tests.cluster.conftest import (
    HOLD_IMAGE,
    OperatorFactory,
    finish_pod,
    report_settings,
    running_pod,
    wait_phase,
)
from tests.conftest import ROOT
from tests.manifests import eval_run, finetune, inputs, merge, rag_index, result

CHART = str(ROOT / "charts" / "crucible")


@pytest.mark.parametrize(
    "sets",
    [
        [],
        [
            "clusterWide=false",
            "watchNamespaces={NS}",
            "postgres.enabled=true",
            "postgres.passwordSecret=pg",
        ],
    ],
)
def test_rendered_chart_passes_server_side_dry_run(
    cluster: LocalCluster, namespace: str, sets: list[str]
) -> None:
    args = [a for s in sets for a in ("--set", s.replace("{NS}", "{" + namespace + "}"))]
    manifests = cluster.helm(
        "template", "crucible", CHART, "-n", namespace, "--kube-version=1.34.4", *args
    ).stdout
    out = cluster.kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-", stdin=manifests
    ).stdout
    assert "deployment.apps/crucible created (server dry run)" in out


@pytest.fixture
def release(cluster: LocalCluster) -> Iterator[str]:
    """The chart installed cluster-wide into its own namespace."""
    release_ns = f"crucible-{uuid.uuid4().hex[:6]}"
    cluster.helm(
        "install",
        "crucible",
        CHART,
        "-n",
        release_ns,
        "--create-namespace",
        "--wait",
        "--timeout=120s",
    )
    yield release_ns
    cluster.helm("uninstall", "crucible", "-n", release_ns, check=False)
    cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def test_helm_install_runs_the_operator(cluster: LocalCluster, release: str) -> None:
    cluster.kubectl(
        "wait", "--for=condition=Available", "deployment/crucible", "-n", release, "--timeout=60s"
    )
    notes = cluster.helm("get", "notes", "crucible", "-n", release).stdout
    assert "kubectl apply -f examples/nitro/" in notes
    dashboards = cluster.kubectl(
        "get", "configmaps", "-n", release, "-l", "grafana_dashboard=1", "-o", "name"
    ).stdout.split()
    assert len(dashboards) == 4


def test_service_account_rbac_is_least_privilege(cluster: LocalCluster, release: str) -> None:
    listing = cluster.kubectl(
        "auth", "can-i", "--list", "-n", "default", f"--as=system:serviceaccount:{release}:crucible"
    ).stdout
    rows = [line.split() for line in listing.splitlines()[1:] if line.strip()]
    for row in rows:
        verbs = " ".join(row[1:])
        assert "[*]" not in verbs, row
        assert not row[0].startswith("secrets"), row
    granted = {row[0] for row in rows}
    assert {"jobs.batch", "deployments.apps"} <= granted
    for kind in KINDS:  # every kind, and its status, or the operator cannot reconcile it
        assert {f"{kind.plural}.crucible.dev", f"{kind.plural}.crucible.dev/status"} <= granted


@pytest.mark.pod_security_baseline
@pytest.mark.usefixtures("model_store")
def test_operator_with_the_charts_credentials_drives_the_chain(
    cluster: LocalCluster,
    namespace: str,
    release: str,
    operator: OperatorFactory,
    tmp_path: Path,
) -> None:
    as_operator = cluster.service_account_kubeconfig(release, "crucible")
    # The chart grants no rights over identities: the workloads push to the report endpoint.
    reports = report_settings(cluster, tmp_path, "127.0.0.1")
    cluster.kubectl_apply(inputs(), "-n", namespace)
    with operator(
        KUBECONFIG=str(as_operator),
        CRUCIBLE_RAG_IMAGE=HOLD_IMAGE,
        CRUCIBLE_EVAL_IMAGE=HOLD_IMAGE,
        **reports,
    ):
        cluster.kubectl_apply([merge(), finetune(), rag_index(), eval_run()], "-n", namespace)
        pod = running_pod(cluster, namespace, "docs-rag")
        finish_pod(cluster, namespace, pod, report={"documents": 1, "chunks": 2})
        pod = running_pod(cluster, namespace, "bench-eval")
        # Its report ConfigMap left unwritten, as when the API server was away at the end:
        # the results come from the pod's termination message.
        finish_pod(
            cluster, namespace, pod, report={"results": [result("tuned", True, [0.6, 0.6, 0.6])]}
        )
        assert wait_phase(cluster, namespace, "er", "bench", "Succeeded")["bestModel"] == (
            "tuned (RAG)"
        )
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    reasons = {
        (e["involvedObject"]["kind"], e["type"], e["reason"])
        for e in events["items"]
        if e.get("reportingComponent") == "crucible-operator"
    }
    assert {("ModelMerge", "Normal", "Succeeded"), ("EvalRun", "Normal", "Succeeded")} <= reasons
    # Starting to run is no Event: the status says so, and the Job's own Events.
    assert not [r for r in reasons if r[2] == "JobRunning"], reasons


def test_chart_uninstall_leaves_the_crds(cluster: LocalCluster) -> None:
    ns = f"crucible-{uuid.uuid4().hex[:6]}"
    cluster.helm("install", "crucible", CHART, "-n", ns, "--create-namespace")
    cluster.helm("uninstall", "crucible", "-n", ns)
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout
    assert "customresourcedefinition.apiextensions.k8s.io/modelmerges.crucible.dev" in crds
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
