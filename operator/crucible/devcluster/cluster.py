"""A real Kubernetes control plane on 127.0.0.1 for tests and `crucible dev up`.

etcd, kube-apiserver (RBAC), kube-controller-manager (Jobs, Deployments, garbage collection,
namespace deletion), kube-scheduler and kwok, whose fake Nodes advertise GPUs so that GPU Jobs
are scheduled and their pods "run" without a kubelet (scheduling and scale tests). Real nodes,
whose kubelets run the pods, join it through `crucible.devcluster.node`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from crucible.devcluster import processes
from crucible.devcluster.binaries import Binaries, find_binaries
from crucible.devcluster.pki import Pki, create_pki

KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class _Process:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    def stop(self, grace: float = 10) -> None:
        processes.stop(self.popen, grace)
        self.log.close()


@dataclass
class LocalCluster:
    """Start with `start()` (or use as a context manager); everything runs under `workdir`."""

    workdir: Path
    nodes: int = 1
    gpus_per_node: int = 8
    binaries: Binaries = field(default_factory=find_binaries)
    _processes: list[_Process] = field(default_factory=list, init=False)
    apiserver_port: int = field(default=0, init=False)
    pki: Pki | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # The components run with the workdir as their cwd: every path handed to them is absolute.
        self.workdir = self.workdir.resolve()

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        b = self.binaries
        self.pki = pki = create_pki(
            self.workdir / "pki",
            [
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                str(b.etcd),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(lambda: self._http_ok(f"{etcd_url}/health"), "etcd", deadline)

        self.apiserver_port = free_port()
        self._spawn(
            "kube-apiserver",
            [
                str(b.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=Node,RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--endpoint-reconciler-type=none",
                # Logs, exec and port-forward reach a real node's kubelet at its address on the
                # node bridge (crucible.devcluster.node), as the admin.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                # A namespace's annotations may pin its pods to a node and tolerate its taints
                # (the tests' namespaces for the real node, beside kwok's).
                "--enable-admission-plugins=PodNodeSelector,PodTolerationRestriction",
                f"--kubelet-client-certificate={pki.admin_cert}",
                f"--kubelet-client-key={pki.admin_key}",
                "--profiling=false",
            ],
        )
        self._write_kubeconfig(
            self.kubeconfig,
            {
                "client-certificate": str(pki.admin_cert),
                "client-key": str(pki.admin_key),
            },
        )
        self._wait(lambda: self._api_ok("/readyz"), "kube-apiserver", deadline)

        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        self._spawn(
            "kube-controller-manager",
            [
                str(b.kube_controller_manager),
                kubeconfig,
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                # IPAM would need pod CIDRs and the cloud controllers a cloud: kwok fakes neither.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=false",
                "--concurrent-job-syncs=5",
                # Its default, /usr/libexec/kubernetes/..., would be made on the host for good.
                f"--flex-volume-plugin-dir={self.workdir / 'flexvolume'}",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(b.kube_scheduler),
                kubeconfig,
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
            ],
        )
        self._spawn(
            "kwok",
            [
                str(b.kwok),
                kubeconfig,
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=" + "=".join(FAKE_NODE_ANNOTATION),
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.0.1",
                # kwok renews the nodes' Leases, the heartbeat the node lifecycle controller reads.
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        if self.nodes:
            self.kubectl_apply(self._node_manifests())
        self._wait(self._nodes_ready, "kwok nodes", deadline)
        # Pods need their namespace's default ServiceAccount, made by the controller manager.
        self._wait(
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            "kube-controller-manager",
            deadline,
        )

    def pids(self) -> dict[str, int]:
        """Each component's process id, by name (kube-apiserver, etcd, kwok, ...)."""
        return {p.name: p.popen.pid for p in self._processes}

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again, as an upgrade of the control plane does. Its
        watch caches begin anew at etcd's current revision: a watch from an older version is
        answered 410 Gone, and its client must list again."""
        (old,) = [p for p in self._processes if p.name == "kube-apiserver"]
        old.stop()
        fresh = self._spawn(old.name, old.argv)
        self._processes.remove(fresh)
        self._processes[self._processes.index(old)] = fresh  # stopped in the same order
        self._wait(lambda: self._api_ok("/readyz"), "kube-apiserver", time.monotonic() + 120)

    def stop(self) -> None:
        """Stop every process, last started first."""
        while self._processes:
            self._processes.pop().stop()

    def keep_logs(self, destination: Path) -> Path:
        """Copy the components' logs (e.g. after a failed test run)."""
        shutil.copytree(self.logs, destination, dirs_exist_ok=True)
        return destination

    # -- clients --------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def kubectl_apply(self, documents: Sequence[dict[str, Any]] | str, *extra: str) -> str:
        text = documents if isinstance(documents, str) else yaml.safe_dump_all(documents)
        return self.kubectl("apply", "-f", "-", *extra, stdin=text).stdout

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binaries.helm), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={
                **os.environ,
                "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
                "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
                "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
            },
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path | None = None, duration: str = "2h"
    ) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (a bound token)."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        path = path or self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        self._write_kubeconfig(path, {"token": token}, namespace=namespace)
        return path

    # -- helpers --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        log = (self.logs / f"{name}.log").open("ab")
        process = _Process(name, argv, processes.spawn(argv, log, self.workdir), log)
        self._processes.append(process)
        return process

    def _wait(self, ready: Any, what: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            for p in self._processes:
                if p.popen.poll() is not None:
                    tail = (self.logs / f"{p.name}.log").read_text(errors="replace")[-3000:]
                    raise ControlPlaneError(
                        f"{p.name} exited with {p.popen.returncode}; its log ends:\n{tail}"
                    )
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        raise ControlPlaneError(f"{what} not ready in time; logs in {self.logs}")

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    def _api_ok(self, path: str) -> bool:
        assert self.pki
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        try:
            with urllib.request.urlopen(self.server + path, timeout=2, context=context) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError:
            return False

    def _write_kubeconfig(
        self, path: Path, user: dict[str, str], namespace: str = "default"
    ) -> None:
        assert self.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "crucible-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki.ca_cert),
                    },
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [
                {
                    "name": "crucible-local",
                    "context": {
                        "cluster": "crucible-local",
                        "user": "user",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "crucible-local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _node_manifests(self) -> list[dict[str, Any]]:
        capacity = {
            "cpu": "64",
            "memory": "512Gi",
            "pods": "110",
            GPU_RESOURCE: str(self.gpus_per_node),
        }
        return [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"kwok-gpu-{i}",
                    "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
                    "labels": {
                        "kubernetes.io/hostname": f"kwok-gpu-{i}",
                        "type": "kwok",
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                    },
                },
                "status": {"capacity": capacity, "allocatable": capacity},
            }
            for i in range(self.nodes)
        ]

    def _nodes_ready(self) -> bool:
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) >= self.nodes


def folder_claim(namespace: str, claim: str, folder: Path) -> list[dict[str, Any]]:
    """A PersistentVolumeClaim bound to a folder of this machine (a hostPath volume): the
    model store of the tests and of `crucible dev up`."""
    volume = f"{claim}-{namespace}"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "hostPath": {"path": str(folder)},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "100Gi"}},
            },
        },
    ]


@contextlib.contextmanager
def local_cluster(workdir: Path, **options: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workdir, **options)
    with cluster:
        yield cluster
