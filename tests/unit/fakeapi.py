"""An in-memory API server for the unit tier, behind the operator's own client.

`FakeApiServer` answers `KubeClient.request`, the one transport method every verb is written
over, so the engine and the controllers run their real create-or-adopt, conditional replace
and merge-patch code against it. It keeps what the API server guarantees and the operator
relies on: a resourceVersion per write, 404 for what is not there, 409 for a name taken or
a stale resourceVersion, 422 for a name, a label or a status the schema refuses, a status
subresource, generation, finalizers and the garbage collector's cascade. Every change
becomes a watch event, delivered to the engine as the watches would (`deliver`).

What the Job controller and the kubelet do, the tests do through its `job_*` and `pod_*`
helpers; what a workload's pushes to the report endpoint do, through `report` (the endpoint's
checks are the cluster tier's). What the real control plane does beyond this, the cluster tier
proves.
"""

from __future__ import annotations

import copy
import itertools
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from crucible.api import API_VERSION
from crucible.api.contract import WorkloadReport, pack_report
from crucible.api.kinds import KINDS_BY_NAME
from crucible.config import OperatorConfig
from crucible.controllers.engine import Engine
from crucible.controllers.informer import Collection
from crucible.controllers.kube import PLURALS, ApiError, KubeClient
from crucible.controllers.registry import CONTROLLERS
from crucible.controllers.watches import WATCHED
from crucible.resources.common import LABEL_KIND, LABEL_NAME, Owner
from crucible.resources.jobs import COMPLETION_INDEX_LABEL

ObjectKey = tuple[str, str, str, str]  # apiVersion, kind, namespace, name
KIND_OF = {(api_version, plural): kind for (api_version, kind), plural in PLURALS.items()}
PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+/[^/]+))/namespaces/(?P<namespace>[^/]+)"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?P<status>/status)?$"
)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class OperatorGoneError(Exception):
    """The operator's process ended, in the middle of whatever it was doing."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _terms(selector: str) -> dict[str, str]:
    return dict(term.split("=", 1) for term in selector.split(",") if term)


def selects(collection: Collection, obj: dict[str, Any]) -> bool:
    """Whether a watch of `collection` sees `obj`: its kind, and its equality selectors (the
    only ones the operator uses; a field selector here names a top-level field)."""
    labels = obj["metadata"].get("labels") or {}
    return (
        (obj["apiVersion"], obj["kind"]) == (collection.api_version, collection.kind)
        and all(labels.get(k) == v for k, v in _terms(collection.label_selector).items())
        and all(obj.get(k) == v for k, v in _terms(collection.field_selector).items())
    )


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeApiServer(KubeClient):
    def __init__(self) -> None:
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.revision = 0
        self.pending: list[tuple[str, dict[str, Any]]] = []  # watch events not yet delivered
        self.writes: list[str] = []  # "METHOD path" of each request that changed something
        self.refused: list[str] = []  # "status METHOD path" of each write answered an error
        self.api_groups: set[str] = set()  # discovery paths answered: API groups installed
        self._names = itertools.count(1)
        # With a number, the operator's process ends after that many more writes: the next
        # write raises OperatorGoneError instead of reaching the server.
        self.writes_left: int | None = None
        # What each run's workload reported last (by report name), as its Reporter holds it:
        # a pod that succeeds packs it into its termination message.
        self.reports: dict[tuple[str, str], dict[str, Any]] = {}
        # Reports pushed to the endpoint, which the engine gets with the watch events.
        self.pushes: list[tuple[Owner, str, WorkloadReport]] = []

    # -- the transport ------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        if path in self.api_groups:
            return {"kind": "APIResourceList", "groupVersion": path.removeprefix("/apis/")}
        match = PATH.match(path)
        if match is None:
            return None
        api_version = match["core"] or match["group"]
        kind = KIND_OF.get((api_version, match["plural"]))
        if kind is None:
            return None
        namespace, name = match["namespace"], match["name"]
        if method == "GET":
            if name is None:
                return {"items": self._list(api_version, kind, namespace, params or {})}
            found = self.objects.get((api_version, kind, namespace, name))
            return copy.deepcopy(found)
        if self.writes_left == 0:
            raise OperatorGoneError(f"{method} {path}")
        key = (api_version, kind, namespace, name or "")
        try:
            answer = self._write(method, path, key, body, status=bool(match["status"]))
        except ApiError as error:
            self.refused.append(f"{error.status} {method} {path}")
            raise
        if answer is not None:
            self.writes.append(f"{method} {path}")
            if self.writes_left is not None:
                self.writes_left -= 1
        return answer

    def _write(
        self, method: str, path: str, key: ObjectKey, body: Any, *, status: bool
    ) -> dict[str, Any] | None:
        if method == "POST":
            return self.create_object(copy.deepcopy(body), path)
        existing = self.objects.get(key)
        if existing is None:
            return None
        if method == "DELETE":
            return self._delete(key)
        if method == "PUT":
            stale = body["metadata"].get("resourceVersion")
            if stale is not None and stale != existing["metadata"]["resourceVersion"]:
                raise ApiError(409, method, path, "the object has been modified")
            updated = {**copy.deepcopy(body), "status": existing.get("status")}
            updated["metadata"] = {
                **body["metadata"],
                **{k: existing["metadata"][k] for k in ("uid", "creationTimestamp")},
            }
            return self._store(key, updated, existing, path)
        assert method == "PATCH"
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != existing["metadata"]["resourceVersion"]:
            raise ApiError(409, method, path, "the object has been modified")
        if status:
            updated = {
                **existing,
                "status": merge_patch(existing.get("status") or {}, body["status"]),
            }
        else:
            updated = merge_patch(existing, {k: v for k, v in body.items() if k != "status"})
        return self._store(key, updated, existing, path)

    # -- the server's rules -------------------------------------------------------------

    def _validate(self, obj: dict[str, Any], path: str) -> None:
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
            raise ApiError(422, "POST", path, f"metadata.name: Invalid value: {name!r}")
        for key, value in (meta.get("labels") or {}).items():
            if len(value) > 63 or not LABEL_VALUE.match(value):
                raise ApiError(422, "POST", path, f"metadata.labels[{key}]: Invalid value")
        kind = KINDS_BY_NAME.get(obj["kind"]) if obj["apiVersion"] == API_VERSION else None
        if kind is not None and obj.get("status"):
            try:
                kind.status.model_validate(obj["status"])
            except ValidationError as error:
                raise ApiError(422, "PATCH", path, f"status: {error}") from None

    def create_object(self, obj: dict[str, Any], path: str = "") -> dict[str, Any]:
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{next(self._names):05d}"
        key = (obj["apiVersion"], obj["kind"], meta["namespace"], meta.get("name") or "")
        if key in self.objects:
            raise ApiError(409, "POST", path, f"{obj['kind']} {key[3]!r} already exists")
        meta["uid"] = f"uid-{key[1].lower()}-{key[3]}-{next(self._names)}"
        meta["creationTimestamp"] = now()
        if obj["apiVersion"] == API_VERSION:
            meta["generation"] = 1
            obj.pop("status", None)  # the status subresource: set through /status only
        return self._store(key, obj, None, path)

    def _store(
        self,
        key: ObjectKey,
        obj: dict[str, Any],
        existing: dict[str, Any] | None,
        path: str,
    ) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        self._validate(obj, path)
        meta = obj["metadata"]
        if existing is not None and obj["apiVersion"] == API_VERSION:
            spec_changed = obj.get("spec") != existing.get("spec")
            meta["generation"] = existing["metadata"]["generation"] + spec_changed
        if existing is not None and meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(key)
        self.revision += 1
        meta["resourceVersion"] = str(self.revision)
        if obj.get("status") is None:
            obj.pop("status", None)
        self.objects[key] = obj
        self.pending.append(("ADDED" if existing is None else "MODIFIED", copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def _delete(self, key: ObjectKey) -> dict[str, Any]:
        obj = self.objects[key]
        if obj["metadata"].get("finalizers"):
            marked = copy.deepcopy(obj)
            marked["metadata"]["deletionTimestamp"] = now()
            return self._store(key, marked, obj, "")
        return self._remove(key)

    def _remove(self, key: ObjectKey) -> dict[str, Any]:
        """Remove the object and, as the garbage collector does, whatever it owns."""
        obj = self.objects.pop(key)
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.pending.append(("DELETED", copy.deepcopy(obj)))
        uid = obj["metadata"]["uid"]
        for other, child in list(self.objects.items()):
            owners = child["metadata"].get("ownerReferences") or []
            if other in self.objects and any(o.get("uid") == uid for o in owners):
                self._delete(other)
        return obj

    def _list(
        self, api_version: str, kind: str, namespace: str, params: dict[str, str]
    ) -> list[dict[str, Any]]:
        selector = _terms(params.get("labelSelector") or "")
        return [
            copy.deepcopy(obj)
            for (v, k, ns, _), obj in sorted(self.objects.items())
            if (v, k, ns) == (api_version, kind, namespace)
            and all((obj["metadata"].get("labels") or {}).get(a) == b for a, b in selector.items())
        ]

    # -- watch events -------------------------------------------------------------------

    def deliver(self, engine: Engine) -> int:
        """Hand every pending watch event to the engine, as the watches do; how many."""
        events, self.pending = self.pending, []
        for event_type, obj in events:
            if obj["apiVersion"] == API_VERSION:
                engine.run_changed(obj["kind"], event_type, obj)
            for collection, deliver in WATCHED:
                if selects(collection, obj):
                    deliver(engine, event_type, obj)
        pushes, self.pushes = self.pushes, []
        for owner, job, report in pushes:
            engine.report_pushed(owner, job, report)
        return len(events) + len(pushes)

    # -- what users, the Job controller and the kubelet do ------------------------------

    def apply(self, obj: dict[str, Any], namespace: str = "ns") -> dict[str, Any]:
        """kubectl apply: create `obj`, or replace the spec (and data) of the one there."""
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = namespace
        if obj["kind"] == "Secret":
            obj["data"] = obj.pop("stringData", {})
        key = (obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"])
        existing = self.objects.get(key)
        if existing is None:
            return self.create_object(obj)
        fields = {k: v for k, v in obj.items() if k in ("spec", "data")}
        return self._store(key, {**existing, **fields}, existing, "")

    def remove(self, kind: str, name: str, namespace: str = "ns") -> None:
        """kubectl delete."""
        found = self.read(kind, name, namespace)
        self._delete((found["apiVersion"], kind, namespace, name))

    def read(self, kind: str, name: str, namespace: str = "ns") -> dict[str, Any]:
        (found,) = [
            o for (_, k, ns, n), o in self.objects.items() if (k, ns, n) == (kind, namespace, name)
        ]
        return found

    def named(self, kind: str, namespace: str = "ns") -> list[str]:
        return sorted(n for (_, k, ns, n) in self.objects if (k, ns) == (kind, namespace))

    def set_status(
        self, kind: str, name: str, status: dict[str, Any], namespace: str = "ns"
    ) -> None:
        existing = self.read(kind, name, namespace)
        key = (existing["apiVersion"], kind, namespace, name)
        self._store(
            key,
            {**existing, "status": merge_patch(existing.get("status") or {}, status)},
            existing,
            "",
        )

    def rolled_out(self, deployment: str, namespace: str = "ns") -> None:
        """What the Deployment controller reports once every replica is ready."""
        replicas = self.read("Deployment", deployment, namespace)["spec"].get("replicas", 1)
        self.set_status(
            "Deployment",
            deployment,
            {
                "replicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [{"type": "Available", "status": "True"}],
            },
            namespace,
        )

    def job_pod(self, job: str, namespace: str = "ns", index: int = 0, **state: Any) -> str:
        """What the Job controller and the kubelet do for a Job: one pod (of `index`, for an
        Indexed Job), running or in the container `state` given, with the pod template's
        labels."""
        found = self.read("Job", job, namespace)
        template = found["spec"]["template"]
        container = template["spec"]["containers"][0]
        name = f"{job}-{next(self._names):05d}"
        indexed = found["spec"].get("completionMode") == "Indexed"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    **(template["metadata"].get("labels") or {}),
                    "job-name": job,
                    **({COMPLETION_INDEX_LABEL: str(index)} if indexed else {}),
                },
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job,
                        "uid": found["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": template["spec"],
        }
        self.create_object(pod)
        phase = "Running" if not state else "Pending" if "waiting" in state else "Failed"
        self.set_status(
            "Pod",
            name,
            {
                "phase": phase,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "state": state or {"running": {"startedAt": now()}},
                    }
                ],
            },
            namespace,
        )
        return name

    def job_ends(
        self,
        job: str,
        exit_code: int = 0,
        message: str = "",
        reason: str | None = None,
        namespace: str = "ns",
    ) -> None:
        """The Job's pod exits with `exit_code` (and termination `message`, by default the last
        report packed, as a workload's Reporter.finish leaves it; `reason` is the kubelet's,
        e.g. OOMKilled); the Job controller marks the Job Complete or Failed."""
        pods = [
            n
            for (_, k, ns, n), o in self.objects.items()
            if (k, ns) == ("Pod", namespace) and o["metadata"]["labels"].get("job-name") == job
        ]
        pod = pods[-1] if pods else self.job_pod(job, namespace)
        if exit_code == 0 and not message and (report := self._report_of(job, namespace)):
            message = pack_report(WorkloadReport.model_validate(report))
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            **({"message": message} if message else {}),
        }
        self.set_status(
            "Pod",
            pod,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {**s, "state": {"terminated": terminated}}
                    for s in self.read("Pod", pod, namespace)["status"]["containerStatuses"]
                ],
            },
            namespace,
        )
        condition = "Complete" if exit_code == 0 else "Failed"
        self.set_status(
            "Job",
            job,
            {
                "conditions": [{"type": condition, "status": "True"}],
                "succeeded": int(not exit_code),
            },
            namespace,
        )

    def report(
        self, run: str, report: dict[str, Any], namespace: str = "ns", *, written: bool = True
    ) -> None:
        """What a workload's Reporter does: hold its report (for its termination message) and
        push it to the report endpoint, unless the push is lost (`written` False). `run` names
        the run, or one of a run's several Jobs; a push before its Job exists is refused, as
        the endpoint refuses a pod that is not the run's."""
        self.reports[(namespace, run)] = report
        jobs = [
            o
            for (_, k, ns, n), o in self.objects.items()
            if (k, ns) == ("Job", namespace) and run in (n, o["metadata"]["labels"].get(LABEL_NAME))
        ]
        if jobs and written:
            job = jobs[-1]
            (ref,) = job["metadata"]["ownerReferences"]
            kind = KINDS_BY_NAME[job["metadata"]["labels"][LABEL_KIND]]
            owner = Owner(kind, ref["name"], namespace, ref["uid"])
            pushed = WorkloadReport.model_validate(report)
            self.pushes.append((owner, job["metadata"]["name"], pushed))

    def _report_of(self, job: str, namespace: str) -> dict[str, Any] | None:
        """The report of the workload `job` runs: its run's (a Job is named run-role), or the
        Job's own (one of a run's several Jobs)."""
        runs = [r for ns, r in self.reports if ns == namespace and f"{job}-".startswith(f"{r}-")]
        return self.reports.get((namespace, max(runs, key=len))) if runs else None


class Operator:
    """One operator process on the fake API server: an engine fed by its watches, which
    start, as a restarted process's do, by listing everything there is."""

    def __init__(self, api: FakeApiServer, config: OperatorConfig | None = None) -> None:
        self.api = api
        self.engine = Engine(api, config or OperatorConfig(), CONTROLLERS)
        api.pending = [("ADDED", copy.deepcopy(o)) for o in api.objects.values()]
        self.engine.lead(True)

    async def settle(self, limit: int = 1000) -> int:
        """Deliver the watch events and reconcile what they queue until nothing is queued;
        how many reconciles that took."""
        queue = self.engine.queue
        for reconciles in range(limit):
            self.api.deliver(self.engine)
            if not len(queue):
                return reconciles
            key = await queue.get()
            try:
                await self.engine.reconcile(key)
            finally:
                queue.done(key)
        raise AssertionError(f"still reconciling after {limit} reconciles")
