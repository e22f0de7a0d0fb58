"""A real node for the local cluster, as kind makes them: the kubelet, containerd (runc), a CNI
bridge and kube-proxy in a privileged container (podman) with network, mount, PID and cgroup
namespaces of its own, and CoreDNS as a pod on it.

What the node changes stays inside its container: its iptables rules and routes are in its own
network namespace, its mounts in its own mount namespace, and the kernel settings the kubelet
would set for good on the host are covered there by files of their own (images/node). The host
keeps one Linux bridge and a veth a node for as long as the cluster runs (no IP forwarding, no
iptables rule: the node reaches only the host's address on the bridge), where two listeners
serve it: the API server, relayed from 127.0.0.1, and the image registry. `stop` removes
them, the container and its cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from crucible.devcluster import processes
from crucible.devcluster.binaries import cache_dir, versions
from crucible.devcluster.cluster import ControlPlaneError, LocalCluster
from crucible.devcluster.containers import (
    REGISTRY_HOST,
    ContainerTools,
    Registry,
    remove_cgroups,
)
from crucible.devcluster.images import Image, built_images
from crucible.devcluster.pki import issue

BRIDGE_SUBNETS = ipaddress.IPv4Network("10.250.0.0/16")  # a /24 of it for each cluster's bridge
POD_SUBNET = "10.244.{index}.0/24"
CLUSTER_DNS = "10.0.0.10"  # in the API server's service range
CLUSTER_DOMAIN = "cluster.local"
REGISTRY_PORT = 5000
NODE_ETC = "/etc/crucible-node"
NODE_LABEL = "crucible.dev/local-node"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode:
        raise ControlPlaneError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _used_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]")
    used = []
    for route in routes:
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(route["dst"], strict=False))
    return [n for n in used if isinstance(n, ipaddress.IPv4Network)]


def free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of BRIDGE_SUBNETS that no route of the host's touches."""
    used = _used_networks()
    for subnet in BRIDGE_SUBNETS.subnets(new_prefix=24):
        if not any(subnet.overlaps(n) for n in used if n.prefixlen > 0):
            return subnet
    raise ControlPlaneError(f"no free /24 left in {BRIDGE_SUBNETS} for the node's bridge")


class TcpRelay:
    """Listens on (host, port) and relays each connection to (target_host, target_port): the
    API server stays on 127.0.0.1 while the nodes reach it on the bridge."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="relay")
        self.server: asyncio.Server | None = None

    def start(self) -> None:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, *self.listen), self.loop
        )
        self.server = started.result(10)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(1 << 16):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(OSError):
                sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )

    def stop(self) -> None:
        async def close() -> None:
            if self.server is not None:
                self.server.close()
            connections = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


@dataclass
class NodeNetwork:
    """The host's side of a cluster's nodes: a bridge, the API server's relay and the
    registry, on the bridge's first address."""

    cluster: LocalCluster
    workdir: Path
    subnet: ipaddress.IPv4Network = field(default_factory=free_subnet)
    _relay: TcpRelay | None = field(default=None, init=False)
    _registry: Registry | None = field(default=None, init=False)

    @property
    def bridge(self) -> str:
        return f"crucible{self.subnet.network_address.packed[2]}"  # at most 15 characters

    @property
    def host_address(self) -> str:
        return str(self.subnet.network_address + 1)

    def node_address(self, index: int) -> str:
        return str(self.subnet.network_address + 2 + index)

    @property
    def api_server(self) -> str:
        return f"https://{self.host_address}:{self.cluster.apiserver_port}"

    @property
    def registry(self) -> str:
        return f"{self.host_address}:{REGISTRY_PORT}"

    def start(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            _ip("addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self._relay = TcpRelay(
                (self.host_address, self.cluster.apiserver_port),
                ("127.0.0.1", self.cluster.apiserver_port),
            )
            self._relay.start()
            self._registry = Registry(self.registry, self.workdir / "registry")
            self._registry.start()
            self._publish_api_server()
        except BaseException:
            self.stop()
            raise

    def _publish_api_server(self) -> None:
        """The `kubernetes` Service's endpoint: the relay, which pods reach through the node
        (the API server's own endpoint reconciler is off: it would publish 127.0.0.1)."""
        self.cluster.kubectl_apply(
            [
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": "kubernetes",
                        "namespace": "default",
                        "labels": {
                            "kubernetes.io/service-name": "kubernetes",
                            "endpointslice.kubernetes.io/managed-by": "crucible-devcluster",
                        },
                    },
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [self.host_address]}],
                    "ports": [
                        {"name": "https", "port": self.cluster.apiserver_port, "protocol": "TCP"}
                    ],
                }
            ]
        )

    def stop(self) -> None:
        if self._registry is not None:
            self._registry.stop()
            self._registry = None
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        _ip("link", "del", self.bridge, check=False)


@dataclass
class LocalNode:
    """One node on `network`; start with `start()`. `volumes` are host folders it sees at the
    same paths (for hostPath PersistentVolumes, such as the model store)."""

    network: NodeNetwork
    workdir: Path
    index: int = 0
    volumes: Sequence[Path] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[str] = ()
    tools: ContainerTools = field(default_factory=ContainerTools)
    _run: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)
    _containerd_lock: IO[bytes] | None = field(default=None, init=False)

    @property
    def name(self) -> str:
        return f"crucible-node-{self.index}" if self.index else "crucible-node"

    @property
    def container(self) -> str:
        return f"{self.name}-{self.network.bridge}"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.container}"

    @property
    def cluster(self) -> LocalCluster:
        return self.network.cluster

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def logs(self) -> Path:
        return self.workdir / "log"

    def start(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        try:
            self._configure()
            self._start_container()
            self._wire(deadline)
            self._wait_ready(deadline)
            self._prune_images(built_images().values())
        except BaseException:
            self.stop()
            raise

    # -- configuration ------------------------------------------------------------------

    def _configure(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        pki = self.cluster.pki
        assert pki is not None
        (self.etc / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
        inside = Path(NODE_ETC)
        for user, common_name, organization in (
            ("kubelet", f"system:node:{self.name}", "system:nodes"),
            ("kube-proxy", "system:kube-proxy", None),
        ):
            issue(pki, self.etc, user, common_name, organization)
            self._kubeconfig(user, inside)
        images = built_images()
        (self.etc / "containerd.toml").write_text(self._containerd_config(images["pause"]))
        hosts = self.etc / "certs.d" / REGISTRY_HOST / "hosts.toml"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(
            f'server = "http://{REGISTRY_HOST}"\n\n'
            f'[host."http://{self.network.registry}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
        cni = self.etc / "cni" / "10-crucible.conflist"
        cni.parent.mkdir(exist_ok=True)
        cni.write_text(json.dumps(self._cni_config(), indent=2))
        (self.etc / "resolv.conf").write_text(f"search {CLUSTER_DOMAIN}\noptions ndots:5\n")
        (self.etc / "kubelet.yaml").write_text(yaml.safe_dump(self._kubelet_config()))
        (self.etc / "kubelet.flags").write_text("\n".join(self._kubelet_flags()) + "\n")
        (self.etc / "kube-proxy.yaml").write_text(yaml.safe_dump(self._kube_proxy_config()))

    def _kubeconfig(self, user: str, inside: Path) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.network.api_server,
                        "certificate-authority": str(inside / "ca.crt"),
                        # The serving certificate names 127.0.0.1, not the bridge's address.
                        "tls-server-name": "kubernetes",
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(inside / f"{user}.crt"),
                        "client-key": str(inside / f"{user}.key"),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        (self.etc / f"{user}.kubeconfig").write_text(yaml.safe_dump(config))

    def _containerd_config(self, pause_image: str) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return "\n".join(
            [
                "version = 2",
                f"[{cri}]",
                f'  sandbox_image = "{pause_image}"',
                # This host refuses negative OOM scores: without this, every sandbox fails.
                "  restrict_oom_score_adj = true",
                f"[{cri}.containerd]",
                '  snapshotter = "overlayfs"',
                # The compressed layers go once unpacked: the images are several GB each, and
                # the registry keeps them anyway.
                "  discard_unpacked_layers = true",
                '  default_runtime_name = "runc"',
                f"[{cri}.containerd.runtimes.runc]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"[{cri}.containerd.runtimes.runc.options]",
                "  SystemdCgroup = false",
                f"[{cri}.cni]",
                '  bin_dir = "/usr/lib/cni"',
                f'  conf_dir = "{NODE_ETC}/cni"',
                f"[{cri}.registry]",
                f'  config_path = "{NODE_ETC}/certs.d"',
                "",
            ]
        )

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "crucible",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET.format(index=self.index)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": f"{NODE_ETC}/ca.crt"},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",  # there is no systemd
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": f"{NODE_ETC}/resolv.conf",
            "failSwapOn": False,
            # true would stop the kubelet at the host's own vm.overcommit_memory and
            # kernel.panic; the entrypoint gives it copies of those to set instead.
            "protectKernelDefaults": False,
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 95,
            "imageGCLowThresholdPercent": 90,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2Gi",
                "imagefs.available": "2Gi",
            },
        }

    def _kubelet_flags(self) -> list[str]:
        flags = [
            f"--config={NODE_ETC}/kubelet.yaml",
            f"--kubeconfig={NODE_ETC}/kubelet.kubeconfig",
            f"--hostname-override={self.name}",
            "--node-labels="
            + ",".join(f"{k}={v}" for k, v in {NODE_LABEL: self.name, **self.labels}.items()),
        ]
        if self.taints:
            flags.append("--register-with-taints=" + ",".join(self.taints))
        return flags

    def _kube_proxy_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": f"{NODE_ETC}/kube-proxy.kubeconfig"},
            "hostnameOverride": self.name,
            "mode": "iptables",
            "clusterCIDR": "10.244.0.0/16",
            # 0 leaves the host's conntrack table size and timeouts alone (kube-proxy would
            # set them for the whole host, as kind's nodes do not either).
            "conntrack": {
                "maxPerCore": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }

    # -- the container --------------------------------------------------------------------

    def _containerd_root(self) -> Path:
        """Pulled images are kept for the next node in the cache; a second node running at
        the same time gets a folder of its own."""
        shared = cache_dir() / "node" / "containerd"
        shared.mkdir(parents=True, exist_ok=True)
        lock = (shared.parent / "containerd.lock").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return self.workdir / "containerd"
        self._containerd_lock = lock
        return shared

    def _start_container(self) -> None:
        self.tools("podman", "rm", "--force", "--ignore", self.container)
        bin_dir = cache_dir() / "bin" / f"k8s-{versions()['K8S_VERSION']}"
        containerd_root = self._containerd_root()
        containerd_root.mkdir(parents=True, exist_ok=True)
        mounts = [
            f"{self.etc}:{NODE_ETC}:ro",
            f"{bin_dir / 'kubelet'}:/usr/local/bin/kubelet:ro",
            f"{bin_dir / 'kube-proxy'}:/usr/local/bin/kube-proxy:ro",
            f"{containerd_root}:/var/lib/containerd",
            f"{self.logs}:/var/log",
            *(f"{v}:{v}" for v in self.volumes),
        ]
        self._log = (self.workdir / "container.log").open("ab")
        self._run = self.tools.popen(
            "podman",
            [
                "run",
                "--rm",
                f"--name={self.container}",
                f"--hostname={self.name}",
                f"--label={NODE_LABEL}={self.name}",
                "--privileged",
                "--cgroupns=private",
                f"--cgroup-parent={self.cgroup_parent}",
                "--init",
                "--network=none",
                *(f"--volume={m}" for m in mounts),
                Image("node").local,
            ],
            self._log,
            self.workdir,
        )

    def _pid(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            if self._run is not None and self._run.poll() is not None:
                raise ControlPlaneError(
                    f"the node container exited: {(self.workdir / 'container.log').read_text()}"
                )
            found = self.tools(
                "podman", "inspect", "--format", "{{.State.Pid}}", self.container, check=False
            )
            if found.returncode == 0 and int(found.stdout.strip() or 0) > 0:
                return int(found.stdout)
            time.sleep(0.2)
        raise ControlPlaneError(f"the node container {self.container} did not start")

    def _wire(self, deadline: float) -> None:
        """A veth from the bridge into the node's network namespace, as its eth0."""
        pid = self._pid(deadline)
        veth = f"{self.network.bridge}n{self.index}"
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
        _ip("link", "set", veth, "master", self.network.bridge, "up")
        inside = ["nsenter", f"--net=/proc/{pid}/ns/net", "ip"]
        address = f"{self.network.node_address(self.index)}/{self.network.subnet.prefixlen}"
        for args in (
            ["link", "set", "lo", "up"],
            ["addr", "add", address, "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["route", "add", "default", "via", self.network.host_address],
        ):
            subprocess.run([*inside, *args], check=True, capture_output=True)

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self._run is not None and self._run.poll() is not None:
                raise ControlPlaneError(
                    f"the node {self.name} stopped; its logs are in {self.logs / 'crucible-node'}"
                )
            found = self.cluster.kubectl(
                "get",
                "node",
                self.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )
            if found.stdout == "True":
                return
            time.sleep(0.5)
        raise ControlPlaneError(
            f"the node {self.name} was not Ready in time; logs in {self.logs / 'crucible-node'}"
        )

    def _prune_images(self, wanted: Iterable[str]) -> None:
        """Remove from containerd's store the images of earlier builds, which the cache would
        otherwise keep at several GB each: those whose manifest is none of `wanted`."""
        digests = {reference.partition("@")[2] for reference in wanted}
        listed = self.tools(
            "podman", "exec", self.container, "ctr", "--namespace", "k8s.io", "images", "ls"
        ).stdout.splitlines()[1:]
        stale = [row.split()[0] for row in listed if row.split()[2] not in digests]
        if stale:
            self.tools(
                "podman", "exec", self.container, "ctr", "--namespace", "k8s.io",
                "images", "rm", *stale,
            )  # fmt: skip

    def stopped(self) -> str | None:
        """Why the node is gone, if it is."""
        if self._run is None or self._run.poll() is None:
            return None
        return f"the node {self.name} stopped; its logs are in {self.logs / 'crucible-node'}"

    def stop(self) -> None:
        """Stop the container (its processes, mounts and network namespace go with it), then
        remove what the host kept for it: the veth and its cgroups."""
        self.tools("podman", "stop", "--ignore", "--time=20", self.container, check=False)
        if self._run is not None:
            try:
                self._run.wait(60)
            except subprocess.TimeoutExpired:
                processes.stop(self._run)
            self._run = None
        self.tools("podman", "rm", "--force", "--ignore", self.container, check=False)
        _ip("link", "del", f"{self.network.bridge}n{self.index}", check=False)
        remove_cgroups(self.cgroup_parent)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._containerd_lock is not None:
            self._containerd_lock.close()
            self._containerd_lock = None
        self.tools.cleanup()


def coredns_manifests(image: str) -> list[dict[str, Any]]:
    """CoreDNS serving cluster.local at CLUSTER_DNS, as kubeadm deploys it."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    corefile = (
        ".:53 {\n"
        "    errors\n"
        "    health :8080\n"
        "    ready :8181\n"
        f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "    }\n"
        "    cache 30\n"
        "    loop\n"
        "}\n"
    )
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", **meta}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        # On a real node, whatever its taints: never on kwok's, beside it in
                        # the tests' cluster, whose pods do not really run.
                        "tolerations": [{"operator": "Exists"}],
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchExpressions": [
                                                {"key": NODE_LABEL, "operator": "Exists"}
                                            ]
                                        }
                                    ]
                                }
                            }
                        },
                        "securityContext": {
                            "runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"},
                            # Port 53 without NET_BIND_SERVICE.
                            "sysctls": [
                                {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
                            ],
                        },
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                ],
                                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}},
                                "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "70Mi"},
                                    "limits": {"memory": "170Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {**meta, "name": "kube-dns", "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": CLUSTER_DNS,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        },
    ]


@contextlib.contextmanager
def local_nodes(
    cluster: LocalCluster,
    workdir: Path,
    *,
    volumes: Sequence[Path] = (),
    labels: Mapping[str, str] | None = None,
    taints: Sequence[str] = (),
) -> Iterator[LocalNode]:
    """The network, one node on it and CoreDNS; all removed on leaving."""
    network = NodeNetwork(cluster, workdir)
    network.start()
    node = LocalNode(network, workdir / "node", volumes=volumes, labels=labels or {}, taints=taints)
    try:
        node.start()
        cluster.kubectl_apply(coredns_manifests(built_images()["coredns"]))
        # Pods resolve names from their first instant: wait until DNS answers.
        cluster.kubectl(
            "rollout", "status", "deployment/coredns", "-n", "kube-system", "--timeout=120s"
        )
        yield node
    finally:
        node.stop()
        network.stop()
