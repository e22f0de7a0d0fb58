"""The engine's view of the runs' children, kept from watch events (an informer cache).

Children are indexed by their run (namespace and crucible.dev/name label), so a reconcile finds
its Job, pods, servers and report without asking the API server. The view may lag behind the
API server, never run ahead of it: what it shows did happen. So the reconcile trusts it for
progress and for failures it shows, and reads the API before any decision a stale view could
get wrong (a Job that seems gone, the report of a Job that completed). Objects the operator
creates enter the view at once, so the next reconcile does not create them again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from crucible.api.contract import WorkloadReport
from crucible.resources.common import LABEL_NAME, MANAGED_BY, MANAGED_BY_LABEL

ObjectKey = tuple[str, str]  # kind, name


def newer(candidate: Mapping[str, Any], known: Mapping[str, Any] | None) -> bool:
    """Whether `candidate` is at least as recent as `known` (resourceVersions are etcd
    revisions in practice; where they do not parse, the latest seen wins)."""
    if known is None:
        return True
    try:
        return int(candidate["metadata"]["resourceVersion"]) >= int(
            known["metadata"]["resourceVersion"]
        )
    except (KeyError, TypeError, ValueError):
        return True


def seen(candidate: Mapping[str, Any], known: Mapping[str, Any] | None) -> bool:
    """Whether `known` is this very version of `candidate`: the watch's echo of a write the
    operator made itself (and stored at once), or an object listed again. Nothing in it is
    news to the run it belongs to."""
    version = (known or {}).get("metadata", {}).get("resourceVersion")
    return version is not None and version == candidate["metadata"].get("resourceVersion")


# kubectl apply's copy of the whole object as last applied: nothing reconciles from it.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim_run(body: dict[str, Any]) -> dict[str, Any]:
    """A Crucible resource as the engine keeps it: without managedFields and kubectl's
    last-applied copy, which together are often larger than the rest of the object."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations") or {}
    if LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**body, "metadata": meta}


def slim(body: dict[str, Any]) -> dict[str, Any]:
    """What a reconcile reads of a child: metadata without managedFields (and a pod's without
    its annotations), a Job's spec without its pod template, and status."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    spec = body.get("spec") or {}
    if body.get("kind") == "Job":
        spec = {k: v for k, v in spec.items() if k == "suspend"}
    elif body.get("kind") == "Pod":
        spec = {}
        meta.pop("annotations", None)  # its task among them: nothing reads a pod's
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": meta,
        "spec": spec,
        "status": body.get("status") or {},
    }


@dataclass(frozen=True)
class Children:
    """The children of one run, as last seen, what the kubelet said of its pods' volumes
    (FailedMount events, by pod name), and the reports its workloads pushed (by Job name)."""

    objects: dict[ObjectKey, dict[str, Any]]
    mount_failures: dict[str, str]
    pushed: dict[str, WorkloadReport] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def of_kind(self, kind: str, **labels: str) -> Iterator[dict[str, Any]]:
        for (k, _), body in self.objects.items():
            found = body["metadata"].get("labels") or {}
            if k == kind and all(found.get(key) == value for key, value in labels.items()):
                yield body


class ChildCache:
    def __init__(self) -> None:
        # (namespace, crucible.dev/name label) → (kind, name) → body
        self._by_run: dict[tuple[str, str], dict[ObjectKey, dict[str, Any]]] = {}
        # (namespace, pod) → its labels, and the kubelet's latest FailedMount message.
        self._pods: dict[tuple[str, str], dict[str, str]] = {}
        self._mount_failures: dict[tuple[str, str], str] = {}
        # (namespace, run label) → Job name → the report its workload pushed last.
        self._pushed: dict[tuple[str, str], dict[str, WorkloadReport]] = {}

    @staticmethod
    def run_of(body: dict[str, Any]) -> tuple[str, str] | None:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or not labels.get(LABEL_NAME):
            return None
        return meta["namespace"], labels[LABEL_NAME]

    def store(self, body: dict[str, Any]) -> bool:
        """Keep `body` in the view; whether it is news to its run (a version not seen yet)."""
        run = self.run_of(body)
        if run is None:
            return False
        key = (body["kind"], body["metadata"]["name"])
        objects = self._by_run.setdefault(run, {})
        known = objects.get(key)
        if seen(body, known):
            return False
        if newer(body, known):
            objects[key] = slim(body)
        if body["kind"] == "Pod":
            self._pods[(run[0], key[1])] = body["metadata"]["labels"]
        return True

    def remove(self, body: dict[str, Any]) -> None:
        run = self.run_of(body)
        if run is None:
            return
        objects = self._by_run.get(run)
        if objects is not None:
            objects.pop((body["kind"], body["metadata"]["name"]), None)
            if not objects:
                del self._by_run[run]
        if body["kind"] == "Pod":
            self._pods.pop((run[0], body["metadata"]["name"]), None)
            self._mount_failures.pop((run[0], body["metadata"]["name"]), None)

    def mount_failed(self, namespace: str, pod: str, message: str) -> dict[str, str] | None:
        """Note a FailedMount of one of the runs' pods; that pod's labels (None when it is
        none of theirs)."""
        labels = self._pods.get((namespace, pod))
        if labels is not None:
            self._mount_failures[(namespace, pod)] = message
        return labels

    def report_pushed(self, namespace: str, label: str, job: str, report: WorkloadReport) -> None:
        self._pushed.setdefault((namespace, label), {})[job] = report

    def forget_reports(self, namespace: str, label: str) -> None:
        """A run was deleted: what its workloads pushed goes with it."""
        self._pushed.pop((namespace, label), None)

    def children(self, namespace: str, label: str) -> Children:
        objects = dict(self._by_run.get((namespace, label), {}))
        failures = {
            name: self._mount_failures[(namespace, name)]
            for kind, name in objects
            if kind == "Pod" and (namespace, name) in self._mount_failures
        }
        return Children(objects, failures, dict(self._pushed.get((namespace, label), {})))
