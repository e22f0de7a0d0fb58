"""The few Kubernetes API calls the handlers make, on dicts (manifests from the builders)."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from crucible.api import API_VERSION, Kind


class ChildConflictError(RuntimeError):
    """An object with a child's name exists and belongs to someone else."""


def api_client() -> client.ApiClient:
    """In a pod its ServiceAccount, elsewhere the kubeconfig KUBECONFIG names."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    return client.ApiClient(configuration)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.dynamic = DynamicClient(api)  # type: ignore[no-untyped-call]

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._resource(api_version, kind).get(name=name, namespace=namespace)
        except NotFoundError:
            return None
        result: dict[str, Any] = found.to_dict()
        return result

    def get_run(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(API_VERSION, kind.kind, namespace, name)

    def list(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        found = self._resource(api_version, kind).get(
            namespace=namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items())
        )
        items: list[dict[str, Any]] = found.to_dict()["items"]
        return items

    def ensure(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create `manifest`, or adopt the existing object of that name when it is ours (same
        controller owner): re-running a handler never makes a second one."""
        meta = manifest["metadata"]
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            created: dict[str, Any] = resource.create(
                body=manifest, namespace=meta["namespace"]
            ).to_dict()
            return created
        except ConflictError:
            existing = self.get(
                manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
            )
            if existing is None:  # deleted in between: try once more
                again: dict[str, Any] = resource.create(
                    body=manifest, namespace=meta["namespace"]
                ).to_dict()
                return again
            ours = {r["uid"] for r in meta.get("ownerReferences", []) if r.get("controller")}
            theirs = {
                r["uid"]
                for r in existing["metadata"].get("ownerReferences") or []
                if r.get("controller")
            }
            if not ours & theirs:
                raise ChildConflictError(
                    f"{manifest['kind']} {meta['name']} already exists and is not owned by this "
                    "resource; delete or rename it"
                ) from None
            return existing

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        try:
            self._resource(api_version, kind).delete(
                name=name, namespace=namespace, body={"propagationPolicy": "Background"}
            )
            return True
        except NotFoundError:
            return False

    def patch_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> None:
        api = client.CustomObjectsApi(self.dynamic.client)
        group, version = API_VERSION.split("/")
        try:
            api.patch_namespaced_custom_object_status(
                group, version, namespace, kind.plural, name, {"status": status}
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing to report to
                raise

    def post_event(self, body: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on the resource, for `kubectl describe` and `kubectl get events`."""
        meta = body["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
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
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
        }
        with contextlib.suppress(ApiException):  # auxiliary: never fail a reconcile over one
            self._resource("v1", "Event").create(body=event, namespace=meta["namespace"])
