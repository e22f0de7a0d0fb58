"""The report endpoint's rules, without I/O: the audience a run's pods' tokens are minted
for, the path they push to, whether a pod a token is bound to belongs to the run, and each
run's budget of requests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crucible.resources.common import LABEL_KIND, LABEL_NAME, LABEL_ROLE, Owner, child_name

# A report is a WorkloadReport's JSON: an evaluation of many models with its paired tests is
# the largest, well under this.
MAX_REPORT_BYTES = 1 << 20
# The TokenReview user and extra fields of a token bound to a pod (kube-apiserver sets them).
SERVICE_ACCOUNT_USER = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


class RefusedError(ValueError):
    """The request may not report for the run; the message says why (for the log and the
    reply, never for the status)."""


@dataclass(frozen=True)
class BoundPod:
    """Who a token that passed its TokenReview speaks for: a ServiceAccount of a namespace,
    and the pod the token is bound to."""

    namespace: str
    pod: str
    pod_uid: str

    @classmethod
    def of(cls, review_status: Mapping[str, Any]) -> BoundPod:
        """From an authenticated TokenReview's status; RefusedError for a token of a user, or one
        not bound to a pod (a TokenRequest without boundObjectRef)."""
        user = review_status.get("user") or {}
        username: str = user.get("username") or ""
        namespace, _, account = username.removeprefix(SERVICE_ACCOUNT_USER).partition(":")
        if not username.startswith(SERVICE_ACCOUNT_USER) or not account:
            raise RefusedError(f"the token is {username!r}'s, not a ServiceAccount's")
        extra = user.get("extra") or {}
        pod, uid = (extra.get(POD_NAME_EXTRA) or [""])[0], (extra.get(POD_UID_EXTRA) or [""])[0]
        if not pod or not uid:
            raise RefusedError("the token is bound to no pod")
        return cls(namespace, pod, uid)


def controller_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The owner reference of the object's controller ({} without one)."""
    for reference in (body.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller"):
            found: Mapping[str, Any] = reference
            return found
    return {}


def reporting_job(
    owner: Owner,
    bound: BoundPod,
    pod: Mapping[str, Any] | None,
    job: Mapping[str, Any] | None,
) -> str:
    """The name of the run's Job that the bound pod runs, whose report the request carries.
    The pod must be in the run's namespace, exist with the token's uid, carry the run's labels
    and be controlled by `job` (the Job its controller reference names, as read), which must
    be the run's: named for it and controlled by the run's uid. RefusedError otherwise."""
    if bound.namespace != owner.namespace:
        raise RefusedError(f"the token is of namespace {bound.namespace}, not {owner.namespace}")
    meta = (pod or {}).get("metadata") or {}
    if meta.get("uid") != bound.pod_uid:
        raise RefusedError(f"pod {bound.pod} (uid {bound.pod_uid}) no longer exists")
    labels = meta.get("labels") or {}
    if labels.get(LABEL_KIND) != owner.kind.kind or labels.get(LABEL_NAME) != owner.label:
        raise RefusedError(f"pod {bound.pod} is not one of {owner.kind.kind} {owner.name}'s")
    name = child_name(owner.name, labels.get(LABEL_ROLE) or "")
    controller = controller_of(pod or {})
    job_meta = (job or {}).get("metadata") or {}
    if (
        controller.get("kind") != "Job"
        or controller.get("name") != name
        or job_meta.get("uid") != controller.get("uid")
    ):
        raise RefusedError(f"pod {bound.pod} is not run by a Job of {owner.kind.kind} {owner.name}")
    if controller_of(job or {}).get("uid") != owner.uid:
        raise RefusedError(f"Job {name} is not {owner.kind.kind} {owner.name}'s")
    return name


@dataclass
class RequestBudget:
    """A token bucket per run: `rate` requests a second, `burst` at once. A workload reports
    every few seconds, so only a runaway (or a stranger's flood) meets it, and what it loses is
    progress: a run's results are in its pod's termination message."""

    rate: float
    burst: float
    clock: Callable[[], float]
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key: str) -> float:
        """0 when a request may go on now, else the seconds until one may."""
        now = self.clock()
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


# A label value, so no slash: the field names its controller like endpointslice-controller.k8s.io.
ENDPOINT_SLICE_MANAGER = "operator.crucible.dev"


def report_endpoint_slice(
    service: Mapping[str, Any], pod: str, address: str, port: int
) -> dict[str, Any]:
    """The EndpointSlice of the report Service (which has no selector): the active replica's
    pod alone, so that reports reach the replica that writes the statuses. Owned by the
    Service, it goes when the Service does."""
    meta = service["metadata"]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {
                "kubernetes.io/service-name": meta["name"],
                "endpointslice.kubernetes.io/managed-by": ENDPOINT_SLICE_MANAGER,
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta["uid"]}
            ],
        },
        "addressType": "IPv6" if ":" in address else "IPv4",
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": meta["namespace"]},
            }
        ],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }
