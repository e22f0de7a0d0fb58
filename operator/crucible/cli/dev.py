"""`crucible dev up`: the local control plane with Crucible's CRDs and operator, the examples
applied, and `kubectl get crucible` shown — the main job on one machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from crucible.api.crd import render_crds
from crucible.devcluster.cluster import LocalCluster


def _wait_taken_in(cluster: LocalCluster, namespace: str, timeout: float = 60) -> None:
    """Until the operator has given every resource a phase."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = json.loads(cluster.kubectl("get", "crucible", "-n", namespace, "-o", "json").stdout)
        phases = [item.get("status", {}).get("phase") for item in items["items"]]
        if phases and all(phases):
            return
        time.sleep(0.5)
    raise TimeoutError("the operator did not take the examples in within a minute")


def dev_up(workdir: Path, examples: Path, namespace: str, once: bool) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    cluster = LocalCluster(workdir / "cluster")
    operator: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    try:
        print(
            "starting the local control plane (etcd, kube-apiserver, controller manager, "
            "scheduler, kwok GPU node)…",
            flush=True,
        )
        cluster.start()
        cluster.kubectl_apply("---\n".join(render_crds().values()), "--server-side")
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        operator_log = (workdir / "operator.log").open("wb")
        operator = subprocess.Popen(
            [sys.executable, "-m", "crucible.cli.main", "operator", "--all-namespaces"],
            env={
                **os.environ,
                "KUBECONFIG": str(cluster.kubeconfig),
                "CRUCIBLE_HTTP_ADDRESS": "127.0.0.1",
            },
            stdout=operator_log,
            stderr=subprocess.STDOUT,
        )
        cluster.kubectl("create", "namespace", namespace)
        print(cluster.kubectl("apply", "-n", namespace, "-f", str(examples)).stdout, flush=True)
        _wait_taken_in(cluster, namespace)
        print(cluster.kubectl("get", "crucible", "-n", namespace).stdout, flush=True)
        if once:
            return 0
        print(
            f"Running. In another shell:\n  export KUBECONFIG={cluster.kubeconfig}\n"
            f"  kubectl get crucible -n {namespace}\n"
            f"Operator log: {workdir / 'operator.log'}. Ctrl-C stops everything.",
            flush=True,
        )
        while operator.poll() is None:
            time.sleep(1)
        print(f"the operator exited with {operator.returncode}; see {workdir / 'operator.log'}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
        cluster.stop()
