"""`crucible dev up`: the whole recipe on one machine, deployed as a user would deploy it. The
local control plane the tests use and a real node (kubelet, containerd) beside it; Crucible
installed by its own Helm chart from the images `make images` built (the operator as two pods
under the chart's ServiceAccount and RBAC, Postgres + pgvector as the chart's StatefulSet); a
model store with a real small instruct model; then the examples are applied and their progress
shown until they are done (or Ctrl-C)."""

from __future__ import annotations

import base64
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from crucible.api.evalrun import EvalRunStatus
from crucible.api.experiment import ExperimentStatus
from crucible.api.formats import ModelLocation
from crucible.api.kinds import KINDS_BY_NAME
from crucible.cli.status import custom_objects, leaderboard_table, list_resources, status_table
from crucible.devcluster import processes
from crucible.devcluster.cluster import LocalCluster, folder_claim, free_port
from crucible.devcluster.images import REPOSITORY, built_images
from crucible.devcluster.models import prepare_models
from crucible.devcluster.node import local_nodes
from crucible.metrics.report import REPORT_FILE

STORE_CLAIM = "crucible-models"
DATABASE_SECRET = "postgres"  # key "uri": what examples/quickstart's RagIndex reads
RELEASE = "crucible"
RELEASE_NAMESPACE = "crucible-system"
CHART = REPOSITORY / "charts" / "crucible"


def namespace_manifest(name: str, level: str) -> dict[str, Any]:
    """A namespace whose pods Pod Security admission holds to `level` (and warns of
    restricted)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/warn": "restricted",
            },
        },
    }


def database_secret(namespace: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": DATABASE_SECRET, "namespace": namespace},
        "stringData": {"uri": url},
    }


def chart_values(images: dict[str, str], postgres_secret: str) -> dict[str, Any]:
    """The chart's values for the images just built (references pinned by digest)."""
    repository, _, tag = images["operator"].partition(":")
    return {
        "image": {"repository": repository, "tag": tag},
        "workloads": {
            "mergeImage": images["merge"],
            "trainImage": images["train"],
            "ragImage": images["rag"],
            "evalImage": images["eval"],
            "vllmImage": images["vllm"],
            # A failed workload fails its run at once: the demo shows why instead of retrying.
            "backoffLimit": 0,
        },
        "postgres": {
            "enabled": True,
            "image": images["postgres"],
            "passwordSecret": postgres_secret,
        },
    }


def postgres_volume(folder: Path) -> dict[str, Any]:
    """The PersistentVolume the chart's Postgres StatefulSet claims (its first replica's)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{RELEASE}-postgres-data"},
        "spec": {
            "capacity": {"storage": "20Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "hostPath": {"path": str(folder)},
            "claimRef": {"namespace": RELEASE_NAMESPACE, "name": f"data-{RELEASE}-postgres-0"},
        },
    }


def writable_folder(path: Path) -> Path:
    """A host folder that the pods' non-root users may write (hostPath volumes have no
    fsGroup)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def install_crucible(cluster: LocalCluster, workdir: Path, postgres: Path) -> None:
    """`helm install` of the chart, as a platform team would run it, and Postgres's Secret."""
    password = secrets.token_urlsafe(18)
    cluster.kubectl_apply(
        [
            namespace_manifest(RELEASE_NAMESPACE, "restricted"),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "crucible-postgres", "namespace": RELEASE_NAMESPACE},
                "data": {"password": base64.b64encode(password.encode()).decode()},
            },
            postgres_volume(postgres),
        ]
    )
    values = workdir / "values.yaml"
    values.write_text(yaml.safe_dump(chart_values(built_images(), "crucible-postgres")))
    cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--values",
        str(values),
        "--wait",
        "--timeout=15m",
    )


def database_url(cluster: LocalCluster) -> str:
    encoded = cluster.kubectl(
        "get",
        "secret",
        "crucible-postgres",
        "-n",
        RELEASE_NAMESPACE,
        "-o",
        "jsonpath={.data.password}",
    ).stdout
    password = base64.b64decode(encoded).decode()
    host = f"{RELEASE}-postgres.{RELEASE_NAMESPACE}.svc"
    return f"postgresql://crucible:{password}@{host}:5432/rag"


def leader_pod(cluster: LocalCluster) -> str | None:
    """The operator replica holding the leader Lease: the one whose /metrics has the runs."""
    found = cluster.kubectl(
        "get",
        "lease",
        RELEASE,
        "-n",
        RELEASE_NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
        check=False,
    )
    if found.returncode != 0 or not found.stdout:
        return None
    return found.stdout


class MetricsForward:
    """`kubectl port-forward` from one local port to the leader's /metrics, moved to the new
    leader when the Lease changes hands (a replica restarted or evicted) and restarted if it
    exits: the address dev up printed stays the one to scrape."""

    def __init__(self, cluster: LocalCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.port = free_port()
        self.log = (workdir / "port-forward.log").open("ab")
        self.workdir = workdir
        self.pod: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.follow():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no operator replica took the Lease {RELEASE_NAMESPACE}/{RELEASE}"
                )
            time.sleep(1)

    def follow(self) -> bool:
        """Forward to the current leader; whether a forward runs."""
        leader = leader_pod(self.cluster)
        running = self.process is not None and self.process.poll() is None
        if leader is None or (running and leader == self.pod):
            return running
        self.stop()
        self.pod = leader
        self.process = processes.spawn(
            [
                str(self.cluster.binaries.kubectl),
                f"--kubeconfig={self.cluster.kubeconfig}",
                "port-forward",
                "-n",
                RELEASE_NAMESPACE,
                f"pod/{leader}",
                f"{self.port}:http-metrics",
            ],
            self.log,
            self.workdir,
        )
        return True

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)
            self.process = None

    def close(self) -> None:
        self.stop()
        self.log.close()


def reports(items: list[dict[str, Any]], store: Path) -> list[Path]:
    """The HTML reports the eval and rank workloads wrote beside their results, in the
    store's folder on this machine."""
    found = []
    for item in items:
        status = KINDS_BY_NAME[item["kind"]].read_status(item)
        if not isinstance(status, EvalRunStatus | ExperimentStatus):
            continue
        uri = status.results_uri or ""
        if ModelLocation.claim_of(uri) is not None:
            report = (store / ModelLocation.parse(uri).path).parent / REPORT_FILE
            if report.exists():
                found.append(report)
    return found


def watch(
    namespace: str,
    kubeconfig: Path,
    alive: Callable[[], str | None],
    *,
    store: Path,
    once: bool,
    timeout: float,
) -> int:
    """Show the progress until everything is done (with `once`), or until Ctrl-C; `alive`
    says why the cluster is gone, if it is."""
    deadline = time.monotonic() + timeout
    custom = custom_objects(str(kubeconfig))
    shown, done = "", False
    while True:
        items = list_resources(custom, namespace)
        table = status_table(items)
        if table != shown:
            print(f"\n{time.strftime('%H:%M:%S')}\n{table}", flush=True)
            shown = table
        kinds = [KINDS_BY_NAME[i["kind"]] for i in items]
        phases = [(kind, kind.read_status(i).phase) for kind, i in zip(kinds, items, strict=True)]
        if not done and items and all(kind.settled(p) for kind, p in phases):
            done = True
            print("\n" + leaderboard_table(items), flush=True)
            for report in reports(items, store):
                print(f"report: {report}", flush=True)
            if once:
                return 0 if all(kind.succeeded(p) for kind, p in phases) else 1
            print("all done; still serving the API until Ctrl-C", flush=True)
        if once and time.monotonic() > deadline:
            print(f"not done after {timeout:.0f} s", flush=True)
            return 1
        if (gone := alive()) is not None:
            print(gone, flush=True)
            return 1
        time.sleep(2)


def dev_up(
    workdir: Path,
    examples: Path,
    namespace: str,
    *,
    once: bool,
    timeout: float,
) -> int:
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    store = writable_folder(workdir / "store")
    postgres = writable_folder(workdir / "postgres")

    def stop(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    with ExitStack() as cleanup:
        try:
            print("starting the local control plane and its node…", flush=True)
            cluster = LocalCluster(workdir / "cluster", nodes=0)
            cluster.start()
            cleanup.callback(cluster.stop)
            node = cleanup.enter_context(
                local_nodes(cluster, workdir / "nodes", volumes=[store, postgres])
            )
            print("installing Crucible with its Helm chart…", flush=True)
            install_crucible(cluster, workdir, postgres)

            cluster.kubectl_apply([namespace_manifest(namespace, "baseline")])
            cluster.kubectl_apply(folder_claim(namespace, STORE_CLAIM, store))
            print("linking the models into the model store…", flush=True)
            prepare_models(store)
            cluster.kubectl_apply([database_secret(namespace, database_url(cluster))])

            metrics = MetricsForward(cluster, workdir)
            cleanup.callback(metrics.close)
            metrics.start()

            how = "-k" if (examples / "kustomization.yaml").exists() else "-f"
            print(cluster.kubectl("apply", "-n", namespace, how, str(examples)).stdout, flush=True)
            print(
                f"KUBECONFIG={cluster.kubeconfig}\n"
                f"metrics: {metrics.url}\n"
                f"logs: {node.logs} (the node's, and its pods' under pods/); Ctrl-C stops "
                "everything.",
                flush=True,
            )

            def alive() -> str | None:
                metrics.follow()
                return node.stopped()

            return watch(
                namespace,
                cluster.kubeconfig,
                alive,
                store=store,
                once=once,
                timeout=timeout,
            )
        except KeyboardInterrupt:
            print("stopping…", flush=True)
            return 130
