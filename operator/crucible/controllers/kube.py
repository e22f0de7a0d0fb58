"""The Kubernetes API calls the reconcilers make: asynchronous (aiohttp, on kopf's event loop),
on plain dicts (the manifests the builders render), counted per verb on /metrics.

`KubeClient` holds the verbs (create-or-adopt, conditional replace, merge patches, Events),
all written over one transport method, `request`. `Kube` answers it over HTTP; the unit
tier's in-memory API server (tests/unit/fakeapi.py) answers it from memory, so both tiers run
the same verbs.

Credentials come from the official client's loaders (in a pod its ServiceAccount, whose token
file is re-read as it rotates; elsewhere the kubeconfig KUBECONFIG names), so both work as
kubectl would."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes import client, config

from crucible.api import API_VERSION
from crucible.api.kinds import KINDS
from crucible.metrics import KUBE_REQUESTS

# A watch's connection waits this long past the server's own end of it before giving up.
WATCH_GRACE_SECONDS = 30.0
# The plural of every kind the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Event"): "events",
    ("v1", "Pod"): "pods",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("serving.kserve.io/v1alpha2", "LLMInferenceService"): "llminferenceservices",
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobsets",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjobs",
    **{(API_VERSION, kind.kind): kind.plural for kind in KINDS},
}


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:500]}")
        self.status = status


class ChildConflictError(RuntimeError):
    """An object with a child's name exists and belongs to someone else."""


def client_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """The credentials of every client Crucible makes, the operator's and the CLI's: the
    kubeconfig given; else in a pod its ServiceAccount; else the kubeconfig KUBECONFIG names
    (~/.kube/config without it)."""
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or os.environ.get("KUBECONFIG"),
            client_configuration=configuration,
        )
    return configuration


def path_of(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


class KubeClient(ABC):
    """The API verbs the engine and the controllers use, over `request`."""

    @abstractmethod
    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """The decoded answer; None for 404; ApiError for any other error."""

    async def close(self) -> None:
        return None

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        return await self.request("GET", path_of(api_version, kind, namespace, name))

    async def list(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())}
        found = await self.request("GET", path_of(api_version, kind, namespace), params=params)
        items: list[dict[str, Any]] = (found or {}).get("items") or []
        return items

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create `manifest`, or adopt the existing object of that name when it is ours (same
        controller owner): re-running a reconcile never makes a second one."""
        meta = manifest["metadata"]
        api_version, kind, namespace = manifest["apiVersion"], manifest["kind"], meta["namespace"]
        try:
            created = await self.request(
                "POST", path_of(api_version, kind, namespace), body=manifest
            )
            assert created is not None
            return created
        except ApiError as error:
            if error.status != 409:
                raise
        existing = await self.get(api_version, kind, namespace, meta["name"])
        if existing is None:  # deleted in between: try once more
            return await self.create(manifest)
        ours = {r["uid"] for r in meta.get("ownerReferences", []) if r.get("controller")}
        theirs = {
            r["uid"]
            for r in existing["metadata"].get("ownerReferences") or []
            if r.get("controller")
        }
        if not ours & theirs:
            raise ChildConflictError(
                f"{kind} {meta['name']} already exists and is not owned by this resource; "
                "delete or rename it"
            )
        return existing

    async def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """PUT `manifest`; its resourceVersion makes it conditional (409 when stale)."""
        meta = manifest["metadata"]
        path = path_of(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        replaced = await self.request("PUT", path, body=manifest)
        if replaced is None:
            raise ApiError(404, "PUT", path, "not found")
        return replaced

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        deleted = await self.request(
            "DELETE",
            path_of(api_version, kind, namespace, name),
            body={"propagationPolicy": "Background"},
        )
        return deleted is not None

    async def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A JSON merge patch; None when the object is gone."""
        return await self.request(
            "PATCH",
            path_of(api_version, kind, namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge `status` into the resource's status subresource; None when it is gone."""
        return await self.request(
            "PATCH",
            path_of(API_VERSION, kind, namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def post_event(
        self, body: dict[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event on the resource, for `kubectl describe` and `kubectl get events`."""
        meta = body["metadata"]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "crucible-operator"},
            "reportingComponent": "crucible-operator",
            "reportingInstance": "crucible-operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        # Auxiliary: never fail a reconcile over one.
        with contextlib.suppress(ApiError, aiohttp.ClientError):
            await self.request("POST", path_of("v1", "Event", meta["namespace"]), body=event)


class Kube(KubeClient):
    """One HTTP session to the API server; create it inside the running event loop."""

    def __init__(self, configuration: client.Configuration, *, connections: int = 64) -> None:
        self.configuration = configuration
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        self.session = aiohttp.ClientSession(
            base_url=configuration.host,
            connector=aiohttp.TCPConnector(ssl=context, limit=connections),
            timeout=aiohttp.ClientTimeout(total=60),
            headers={"User-Agent": "crucible-operator"},
        )

    async def close(self) -> None:
        await self.session.close()

    def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        # auth_settings() runs the refresh hook: a rotated ServiceAccount token is read again.
        settings: dict[str, Any] = dict(self.configuration.auth_settings())
        for auth in settings.values():
            if auth["in"] == "header" and auth["value"]:
                headers[auth["key"]] = auth["value"]
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method, path, data=data, params=params, headers=self._headers(content_type)
        ) as response:
            KUBE_REQUESTS.labels(method, str(response.status)).inc()
            if response.status == 404:
                return None
            if response.status >= 400:
                raise ApiError(response.status, method, path, await response.text())
            decoded: dict[str, Any] = await response.json(content_type=None)
            return decoded

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch of `path`, decoded one line each as they come, until the API
        server ends it (after params' timeoutSeconds)."""
        wait = float(params.get("timeoutSeconds") or 300) + WATCH_GRACE_SECONDS
        async with self.session.get(
            path,
            params={**params, "watch": "1"},
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=wait),
        ) as response:
            KUBE_REQUESTS.labels("WATCH", str(response.status)).inc()
            if response.status >= 400:
                raise ApiError(response.status, "WATCH", path, await response.text())
            # Not readline(): an event is one line however long (a ConfigMap of up to 1 MiB).
            pending = b""
            async for chunk in response.content.iter_any():
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
