"""`crucible dev up`: the whole recipe on one machine. The local control plane the tests use,
Crucible's CRDs and operator, a model store with a real small instruct model, an embedded
Postgres + pgvector, and the development runner doing the kubelet's part for Crucible's pods;
then the examples are applied and their progress shown until they are done (or Ctrl-C)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from crucible.api.crd import render_crds
from crucible.api.kinds import KINDS_BY_NAME
from crucible.cli.status import custom_objects, leaderboard_table, list_resources, status_table
from crucible.devcluster import processes
from crucible.devcluster.cluster import LocalCluster, folder_claim, free_port
from crucible.devcluster.models import prepare_models
from crucible.devcluster.runner import DevRunner

STORE_CLAIM = "crucible-models"
DATABASE_SECRET = "postgres"  # key "uri": what examples/quickstart's RagIndex reads


def demo_namespace(name: str) -> dict[str, Any]:
    """The examples' namespace, under the API server's Pod Security admission: the vLLM
    servers' upstream image runs as root, so it enforces baseline and warns of restricted
    (which every other Crucible pod meets)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": "baseline",
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


def watch(
    namespace: str,
    kubeconfig: Path,
    operator: subprocess.Popen[bytes],
    operator_log: Path,
    *,
    once: bool,
    timeout: float,
) -> int:
    """Show the progress until everything is done (with `once`), or until Ctrl-C."""
    deadline = time.monotonic() + timeout
    custom = custom_objects(str(kubeconfig))
    shown, done = "", False
    while True:
        items = list_resources(custom, namespace)
        table = status_table(items)
        if table != shown:
            print(f"\n{time.strftime('%H:%M:%S')}\n{table}", flush=True)
            shown = table
        phases = [(KINDS_BY_NAME[i["kind"]], (i.get("status") or {}).get("phase")) for i in items]
        if not done and items and all(kind.settled(p) for kind, p in phases):
            done = True
            print("\n" + leaderboard_table(items), flush=True)
            if once:
                return 0 if all(kind.succeeded(p) for kind, p in phases) else 1
            print("all done; still serving the API until Ctrl-C", flush=True)
        if once and time.monotonic() > deadline:
            print(f"not done after {timeout:.0f} s", flush=True)
            return 1
        if operator.poll() is not None:
            tail = operator_log.read_text(errors="replace").splitlines()[-20:]
            print(f"the operator exited with {operator.returncode}; {operator_log} ends:")
            print("\n".join(tail), flush=True)
            return 1
        time.sleep(2)


def dev_up(
    workdir: Path,
    examples: Path,
    namespace: str,
    *,
    once: bool,
    vllm_python: str | None,
    database_url: str | None,
    timeout: float,
) -> int:
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    store = workdir / "store"

    def stop(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    with ExitStack() as cleanup:
        try:
            print("starting the local control plane…", flush=True)
            cluster = LocalCluster(workdir / "cluster", nodes=0)
            cluster.start()
            cleanup.callback(cluster.stop)
            cluster.kubectl_apply("---\n".join(render_crds().values()), "--server-side")
            cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

            metrics_port = free_port()  # 8080 may be taken, by another dev up for one
            operator_log = cleanup.enter_context((workdir / "operator.log").open("wb"))
            env = {
                **os.environ,
                "KUBECONFIG": str(cluster.kubeconfig),
                "CRUCIBLE_HTTP_ADDRESS": "127.0.0.1",
                "CRUCIBLE_HTTP_PORT": str(metrics_port),
                "CRUCIBLE_MODEL_STORE_PVC": STORE_CLAIM,
                "CRUCIBLE_JOB_BACKOFF_LIMIT": "0",
            }
            argv = [sys.executable, "-m", "crucible.cli.main", "operator", "--all-namespaces"]
            operator = processes.spawn(argv, operator_log, workdir, env)
            cleanup.callback(processes.stop, operator)

            runner = DevRunner(cluster, workdir, vllm_python)
            runner.start()
            cleanup.callback(runner.stop)

            cluster.kubectl_apply([demo_namespace(namespace)])
            cluster.kubectl_apply(folder_claim(namespace, STORE_CLAIM, store))
            print("linking the models into the model store…", flush=True)
            prepare_models(store)
            if database_url is None:
                import pgserver

                print("starting an embedded Postgres + pgvector…", flush=True)
                postgres = pgserver.get_server(workdir / "postgres", cleanup_mode="stop")
                cleanup.callback(postgres.cleanup)
                database_url = postgres.get_uri()
            cluster.kubectl_apply([database_secret(namespace, database_url)])

            how = "-k" if (examples / "kustomization.yaml").exists() else "-f"
            print(cluster.kubectl("apply", "-n", namespace, how, str(examples)).stdout, flush=True)
            print(
                f"KUBECONFIG={cluster.kubeconfig}\n"
                f"metrics: http://127.0.0.1:{metrics_port}/metrics\n"
                f"logs: {workdir / 'logs'} (workloads), "
                f"{workdir / 'operator.log'}; Ctrl-C stops everything.",
                flush=True,
            )
            return watch(
                namespace,
                cluster.kubeconfig,
                operator,
                workdir / "operator.log",
                once=once,
                timeout=timeout,
            )
        except KeyboardInterrupt:
            print("stopping…", flush=True)
            return 130
