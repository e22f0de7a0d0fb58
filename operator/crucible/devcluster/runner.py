"""The development runner: the kubelet's part for Crucible's own pods on one machine.

It registers a Node, keeps it alive, and for every pod bound to it runs what the container
would run, as a local process: a Crucible workload with the same entrypoint, arguments and
environment; a vLLM server pod as a local vLLM (CPU) of the same model and adapters. Volumes
become local folders (PersistentVolumeClaims their hostPath PersistentVolume, ConfigMaps and
Secrets their keys written out, emptyDirs fresh folders), and paths inside the container are
translated to them — in the arguments, the environment and the task file — as a mount
namespace would. Service names of the servers it runs resolve to their local ports. It
reports each pod's phase, readiness, exit code and termination message through the API, and
writes the workload's report as the pod's own ServiceAccount. Pods it cannot run (any other
image) stay Pending, saying so in the log; nothing is faked.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config

from crucible.devcluster import processes
from crucible.devcluster.cluster import LocalCluster, free_port
from crucible.resources.common import LABEL_ROLE
from crucible.resources.serving import SERVER_LABEL, SERVER_ROLE, VLLM_PORT
from crucible.workloads.common import TERMINATION_LOG_ENV, inside

log = logging.getLogger("crucible.dev.runner")
NODE = "crucible-dev"
HEARTBEAT_SECONDS = 10
WORKLOAD_MODULE = re.compile(r"^crucible\.workloads\.\w+$")
# vLLM on CPU takes its KV cache from this setting; without it, it reaches for most of the RAM.
# 256 MiB holds ~5,500 tokens of the quickstart's model (46 KiB a token in float32): a few
# sequences of its 2,048-token context at once, with LoRA's own memory beside them.
# --enforce-eager: compiling the model takes 25-50 s of a server's start on two cores, for a few
# percent of throughput (measured with the quickstart's model: ready in 27 s instead of 52-54 s).
VLLM_CPU_ARGS = ["--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--enforce-eager"]
# A kubelet without a CPU manager policy pins nothing, and neither does this one: left to
# itself, vLLM's CPU build binds every server to core 0 and keeps the rest for itself.
VLLM_CPU_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
GPU_ONLY_ARGS = {"--gpu-memory-utilization": 1}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LocalPod:
    namespace: str
    name: str
    uid: str
    container: str
    image: str
    sandbox: Path
    popen: subprocess.Popen[bytes]
    log_path: Path
    termination_log: Path
    started: str
    service: str | None = None  # a server's Service name
    port: int | None = None  # and its local port
    scratch: Path | None = None  # a server's short TMPDIR, removed with the pod
    ready: bool = False


class Translation:
    """Container paths → local folders, service URLs → local ports."""

    def __init__(self, mounts: dict[str, Path], hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.local = {p.rstrip("/"): str(v) for p, v in mounts.items()}
        # One pass, longest mount first; a path starts a value or follows '=' (name=path), and
        # runs to the next space or comma.
        paths = "|".join(re.escape(p) for p in sorted(self.local, key=len, reverse=True))
        self.pattern = (
            re.compile(rf"(?:(?<=^)|(?<=[\s=,]))({paths})(/[^\s,]*)?(?=$|[\s,])")
            if mounts
            else None
        )

    def _local(self, match: re.Match[str]) -> str:
        """A container path as the local one; a path that climbs out of its mount is refused,
        as the kubelet's volumes would never show it."""
        rest = match.group(2) or ""
        local = inside(Path(self.local[match.group(1)]), rest.lstrip("/"), match.group(0))
        return str(local) + ("/" if rest.endswith("/") and rest != "/" else "")

    def __call__(self, text: str) -> str:
        if self.pattern is not None:
            text = self.pattern.sub(self._local, text)
        for remote, target in self.hosts.items():
            text = text.replace(remote, target)
        return text

    def walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        if isinstance(value, dict):
            return {k: self.walk(v) for k, v in value.items()}
        return value


class DevRunner:
    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        vllm_python: str | None,
        *,
        cpus: int | None = None,
        memory: str = "64Gi",
    ) -> None:
        self.cluster = cluster
        self.workdir = workdir.resolve()
        self.vllm_python = vllm_python
        self.cpus = cpus or os.cpu_count() or 2
        self.memory = memory
        api = config.new_client_from_config(str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        self.api = api
        # Typed as Any: the calls below pass plain dicts, which the client sends as they are.
        self.core: Any = client.CoreV1Api(api)
        self.coordination: Any = client.CoordinationV1Api(api)
        self.pods: dict[str, LocalPod] = {}
        self.refused: set[str] = set()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    # -- the node ----------------------------------------------------------------------

    def register_node(self) -> None:
        capacity = {"cpu": str(self.cpus), "memory": self.memory, "pods": "110"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE,
                "labels": {
                    "kubernetes.io/hostname": NODE,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "crucible.dev/dev-runner": "true",
                },
            },
        }
        with contextlib.suppress(client.ApiException):
            self.core.create_node(node)
        self.core.patch_node_status(
            NODE,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                    "conditions": [self._ready_condition()],
                }
            },
        )
        self._renew_lease()

    def _ready_condition(self) -> dict[str, Any]:
        return {
            "type": "Ready",
            "status": "True",
            "reason": "DevRunnerReady",
            "message": "crucible dev runner is running pods as local processes",
            "lastHeartbeatTime": now(),
            "lastTransitionTime": now(),
        }

    def _renew_lease(self) -> None:
        lease = {
            "metadata": {"name": NODE, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": NODE,
                "leaseDurationSeconds": 40,
                "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coordination.patch_namespaced_lease(
                NODE, "kube-node-lease", {"spec": lease["spec"]}
            )
        except client.ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", lease)

    # -- the loop ----------------------------------------------------------------------

    def start(self) -> None:
        self.register_node()
        self.thread = threading.Thread(target=self._loop, name="dev-runner", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        # Processes are started from this thread: PDEATHSIG follows the thread that forked.
        beat = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() - beat > HEARTBEAT_SECONDS:
                    self._renew_lease()
                    beat = time.monotonic()
                self.sync()
            except Exception:  # an API hiccup: log it, go on
                log.exception("dev runner sync failed; retrying")
            self.stopping.wait(0.5)
        self._stop_all()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(60)
        else:
            self._stop_all()

    def _stop_all(self) -> None:
        for pod in list(self.pods.values()):
            _stop(pod)
        self.pods.clear()

    def sync(self) -> None:
        listed = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}")
        seen = set()
        for pod in listed.items:
            uid = pod.metadata.uid
            seen.add(uid)
            if pod.metadata.deletion_timestamp is not None:
                self._remove(pod)
            elif uid in self.pods:
                self._observe(self.pods[uid])
            elif pod.status.phase == "Pending" and uid not in self.refused:
                self._run(self.api.sanitize_for_serialization(pod))
        for uid in set(self.pods) - seen:  # deleted at once (grace 0): stop its process
            _stop(self.pods.pop(uid))

    def _remove(self, pod: Any) -> None:
        """What the kubelet does for a deleted pod: stop it, then let the deletion finish."""
        local = self.pods.pop(pod.metadata.uid, None)
        if local is not None:
            _stop(local)
        with contextlib.suppress(client.ApiException):
            self.core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
            )

    # -- starting a pod ----------------------------------------------------------------

    def _run(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        key = f"{meta['namespace']}/{meta['name']}"
        (container,) = spec["containers"][:1]
        is_server = meta.get("labels", {}).get(LABEL_ROLE) == SERVER_ROLE
        command = container.get("command") or []
        is_workload = len(command) >= 3 and command[1] == "-m" and WORKLOAD_MODULE.match(command[2])
        if not (is_server or is_workload) or (is_server and not self.vllm_python):
            self.refused.add(meta["uid"])
            why = "no vLLM (CPU) python given" if is_server else "not a Crucible workload"
            log.warning("%s stays Pending: %s (image %s)", key, why, container.get("image"))
            return
        sandbox = self.workdir / "pods" / meta["namespace"] / meta["name"]
        shutil.rmtree(sandbox, ignore_errors=True)
        sandbox.mkdir(parents=True)
        translate = Translation(self._volumes(pod, container, sandbox), self._server_hosts())
        env = self._environment(meta["namespace"], container, translate)
        termination_log = sandbox / "termination-log"
        env[TERMINATION_LOG_ENV] = str(termination_log)
        if is_server:
            port = free_port()
            argv = self._vllm_argv(container.get("args") or [], translate, port)
            # vLLM binds Unix sockets under TMPDIR: keep that path short (108 bytes at most).
            scratch = Path(tempfile.mkdtemp(prefix="crucible-vllm-"))
            env.setdefault("HOME", str(sandbox))
            env.update(HF_HUB_OFFLINE="1", TMPDIR=str(scratch), **VLLM_CPU_ENV)
        else:
            port, scratch = None, None
            argv = self._workload_argv(command + (container.get("args") or []), translate)
            account = spec.get("serviceAccountName") or "default"
            # The pod's ServiceAccount: the workload acts with its own rights, as in a pod.
            env["KUBECONFIG"] = str(
                self.cluster.service_account_kubeconfig(
                    meta["namespace"], account, sandbox / "serviceaccount.kubeconfig", "24h"
                )
            )
        log_path = self.workdir / "logs" / f"{meta['namespace']}_{meta['name']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as output:
            popen = processes.spawn(argv, output, sandbox, env)
        local = LocalPod(
            meta["namespace"],
            meta["name"],
            meta["uid"],
            container["name"],
            container.get("image", ""),
            sandbox,
            popen,
            log_path,
            termination_log,
            now(),
            meta.get("labels", {}).get(SERVER_LABEL) if is_server else None,
            port,
            scratch,
            ready=not is_server,
        )
        self.pods[meta["uid"]] = local
        log.info("%s: started %s (log %s)", key, " ".join(argv[:4]), log_path)
        self._report_running(local)

    def _server_hosts(self) -> dict[str, str]:
        """http://<service>.<namespace>.svc:8000 → the local port of the server behind it."""
        hosts = {}
        for pod in self.pods.values():
            if pod.service is None:
                continue
            hosts[f"http://{pod.service}.{pod.namespace}.svc:{VLLM_PORT}"] = (
                f"http://127.0.0.1:{pod.port}"
            )
        return hosts

    def _volumes(
        self, pod: dict[str, Any], container: dict[str, Any], sandbox: Path
    ) -> dict[str, Path]:
        namespace = pod["metadata"]["namespace"]
        sources = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = sources[mount["name"]]
            if "persistentVolumeClaim" in volume:
                local = self._claim_folder(namespace, volume["persistentVolumeClaim"]["claimName"])
            else:
                local = sandbox / "volumes" / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
                if "configMap" in volume:
                    found = self.core.read_namespaced_config_map(
                        volume["configMap"]["name"], namespace
                    )
                    binary = {k: base64.b64decode(v) for k, v in (found.binary_data or {}).items()}
                    files = {**{k: v.encode() for k, v in (found.data or {}).items()}, **binary}
                    _write_keys(local, files, volume["configMap"].get("items"))
                elif "secret" in volume:
                    secret = self.core.read_namespaced_secret(
                        volume["secret"]["secretName"], namespace
                    )
                    files = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                    _write_keys(local, files, volume["secret"].get("items"))
            mounts[mount["mountPath"]] = local
        return mounts

    def _claim_folder(self, namespace: str, claim: str) -> Path:
        """The hostPath of the claim's PersistentVolume, or a folder of the runner's own."""
        found = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        if found.spec.volume_name:
            volume = self.core.read_persistent_volume(found.spec.volume_name)
            if volume.spec.host_path is not None:
                path = Path(volume.spec.host_path.path)
                path.mkdir(parents=True, exist_ok=True)
                return path
        path = self.workdir / "volumes" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _environment(
        self, namespace: str, container: dict[str, Any], translate: Translation
    ) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = translate(item["value"])
                continue
            source = item.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                data = self.core.read_namespaced_secret(ref["name"], namespace).data or {}
                env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                data = self.core.read_namespaced_config_map(ref["name"], namespace).data or {}
                env[item["name"]] = data[ref["key"]]
        return env

    def _workload_argv(self, argv: list[str], translate: Translation) -> list[str]:
        """The same entrypoint in this environment's Python; the task file translated."""
        translated = [sys.executable, *[translate(a) for a in argv[1:]]]
        if "--task" in translated:
            task = Path(translated[translated.index("--task") + 1])
            local = task.with_name(f"local-{task.name}")
            local.write_text(json.dumps(translate.walk(json.loads(task.read_text()))))
            translated[translated.index("--task") + 1] = str(local)
        return translated

    def _vllm_argv(self, args: list[str], translate: Translation, port: int) -> list[str]:
        kept: list[str] = []
        skip = 0
        for arg in args:
            if skip:
                skip -= 1
            elif arg in GPU_ONLY_ARGS:
                skip = GPU_ONLY_ARGS[arg]
            else:
                kept.append(translate(arg))
        kept[kept.index("--port") + 1] = str(port)
        kept[kept.index("--host") + 1] = "127.0.0.1"
        assert self.vllm_python is not None
        return [self.vllm_python, "-m", "vllm.entrypoints.openai.api_server", *kept, *VLLM_CPU_ARGS]

    # -- reporting -----------------------------------------------------------------------

    def _observe(self, pod: LocalPod) -> None:
        code = pod.popen.poll()
        if code is not None:
            self._report_terminated(pod, code)
            _stop(self.pods.pop(pod.uid))
            return
        if pod.port is not None and not pod.ready and _healthy(pod.port):
            pod.ready = True
            log.info("%s/%s: vLLM ready on 127.0.0.1:%d", pod.namespace, pod.name, pod.port)
            self._report_running(pod)

    def _report_running(self, pod: LocalPod) -> None:
        ready = "True" if pod.ready else "False"
        conditions = [
            {"type": t, "status": s, "lastTransitionTime": now()}
            for t, s in (
                ("PodScheduled", "True"),
                ("Initialized", "True"),
                ("ContainersReady", ready),
                ("Ready", ready),
            )
        ]
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": pod.started,
                "conditions": conditions,
                "containerStatuses": [
                    self._container(pod, {"running": {"startedAt": pod.started}}, pod.ready)
                ],
            },
        )

    def _report_terminated(self, pod: LocalPod, code: int) -> None:
        message = ""
        with contextlib.suppress(OSError):
            message = pod.termination_log.read_text()
        if not message and code != 0:  # FallbackToLogsOnError
            message = "\n".join(pod.log_path.read_text(errors="replace").splitlines()[-20:])
        terminated = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": pod.started,
            "finishedAt": now(),
            **({"message": message[-4096:]} if message else {}),
        }
        log.info("%s/%s: exited with %d", pod.namespace, pod.name, code)
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [
                    {"type": "Ready", "status": "False", "lastTransitionTime": now()},
                    {"type": "ContainersReady", "status": "False", "lastTransitionTime": now()},
                ],
                "containerStatuses": [self._container(pod, {"terminated": terminated}, False)],
            },
        )

    @staticmethod
    def _container(pod: LocalPod, state: dict[str, Any], ready: bool) -> dict[str, Any]:
        return {
            "name": pod.container,
            "image": pod.image,
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def _patch_status(self, pod: LocalPod, status: dict[str, Any]) -> None:
        with contextlib.suppress(client.ApiException):  # gone meanwhile: nothing to report
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})


def _stop(pod: LocalPod) -> None:
    processes.stop(pod.popen)
    if pod.scratch is not None:
        shutil.rmtree(pod.scratch, ignore_errors=True)


def _write_keys(folder: Path, files: dict[str, bytes], items: list[dict[str, str]] | None) -> None:
    chosen = {i["key"]: i["path"] for i in items} if items else {k: k for k in files}
    for key, relative in chosen.items():
        target = inside(folder, relative, f"key {key}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[key])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (TimeoutError, OSError):
        return False
