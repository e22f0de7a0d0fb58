"""Reading a Job and its pods the way a user would want it explained: a phase, a reason and
a message that says why (OOMKilled, exit code and termination message, image pull failure,
deadline exceeded, a Secret, ConfigMap or volume the pod waits for)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from crucible.api.common import Phase, Reason
from crucible.api.contract import PACKED_REPORT_PREFIX

IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
# The kubelet cannot create the container until something the pod names exists (a Secret or
# ConfigMap key of its environment): the run waits, and goes on once it is created.
CONFIG_WAIT_REASONS = ("CreateContainerConfigError", "CreateContainerError")
# What the kubelet reports for a container of a stopped pod that it cannot find (one
# evicted or deleted while it waited or ran): it says nothing of the workload itself.
UNKNOWN_CONTAINER_REASON = "ContainerStatusUnknown"
NONE: Mapping[str, str] = MappingProxyType({})
# The index of an Indexed Job's pod: a training on several nodes, one pod per node.
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class WorkloadKind:
    """The kind of object that runs a workload's pods: a batch/v1 Job, which the operator
    watches, or a kind of a controller a cluster may have (JobSet, Kubeflow Trainer), read
    when the run is reconciled and waited for while its CRDs are absent."""

    api_version: str
    kind: str
    installs: str  # what a cluster installs to have the kind
    complete: str  # the condition type that says it succeeded
    pod_label: str  # the label its pods carry, valued its name
    watched: bool = False

    @property
    def discovery(self) -> str:
        """The API server's discovery path of the kind's group version: 404 until its CRDs
        are installed."""
        return f"/apis/{self.api_version}"


JOB = WorkloadKind(
    api_version="batch/v1",
    kind="Job",
    installs="Kubernetes",
    complete="Complete",
    pod_label="job-name",
    watched=True,
)


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    reason: Reason
    message: str


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            found: dict[str, Any] = condition
            return found
    return None


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _newest_first(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)


def pod_ended(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def packed_report(pods: list[dict[str, Any]]) -> str | None:
    """The report a container that succeeded left as its termination message, the newest pod's
    first (of a training on several pods, rank 0 reports)."""
    for pod in _newest_first(pods):
        for status in _statuses(pod):
            terminated = (status.get("state") or {}).get("terminated") or {}
            message: str = terminated.get("message") or ""
            if terminated.get("exitCode") == 0 and message.startswith(PACKED_REPORT_PREFIX):
                return message
    return None


def _container_failure(pod: dict[str, Any], container: dict[str, Any]) -> Outcome | None:
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in IMAGE_PULL_REASONS:
        return Outcome(
            Phase.FAILED,
            Reason.IMAGE_PULL_FAILED,
            f"image {container.get('image')} of container {container['name']} cannot be "
            f"pulled ({waiting['reason']}): {waiting.get('message', '').strip()}".rstrip(": "),
        )
    terminated = state.get("terminated") or {}
    if not terminated or terminated.get("exitCode", 0) == 0:
        return None
    if terminated.get("reason") == "OOMKilled":
        return Outcome(
            Phase.FAILED,
            Reason.OOM_KILLED,
            f"container {container['name']} ran out of memory and was killed "
            "(exit code 137): raise spec.resources.memory or reduce the batch size",
        )
    detail = (terminated.get("message") or "").strip()
    if terminated.get("reason") == UNKNOWN_CONTAINER_REASON:
        # The kubelet stopped the pod before the container ran or ended (an eviction, a
        # deletion): the pod's own reason says why.
        status = pod.get("status") or {}
        detail = ": ".join(filter(None, [status.get("reason"), status.get("message")])) or detail
    return Outcome(
        Phase.FAILED,
        Reason.ERROR,
        f"container {container['name']} exited with code {terminated['exitCode']}"
        + (f": {detail[-2000:]}" if detail else ""),
    )


def _of_index(pod: dict[str, Any], outcome: Outcome) -> Outcome:
    """An Indexed Job's pod says which index (which node of a training) failed."""
    index = (pod["metadata"].get("labels") or {}).get(COMPLETION_INDEX_LABEL)
    if index is None:
        return outcome
    where = f"index {index} (pod {pod['metadata']['name']}): "
    return Outcome(outcome.phase, outcome.reason, where + outcome.message)


def pod_failure(pods: list[dict[str, Any]]) -> Outcome | None:
    """The most telling failure among the pods, newest first: a container's own failure
    before one the kubelet could no longer find."""
    found = [
        (_of_index(pod, outcome), container)
        for pod in _newest_first(pods)
        for container in _statuses(pod)
        if (outcome := _container_failure(pod, container)) is not None
    ]
    for outcome, container in found:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("reason") != UNKNOWN_CONTAINER_REASON:
            return outcome
    return found[0][0] if found else None


def pod_blocked(pods: list[dict[str, Any]], mount_failures: Mapping[str, str]) -> Outcome | None:
    """A pending pod that cannot start yet, with the scheduler's or the kubelet's words
    (`mount_failures`: the kubelet's FailedMount events, by pod name). A container that waits
    for its configuration says more than a FailedMount event: it comes after the volumes are
    mounted, so any such event before it is stale (the kubelet's first try of a ConfigMap
    volume can fail while its cache fills, and the event outlives the retry that worked)."""
    for pod in _newest_first(pods):
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        name = pod["metadata"]["name"]
        for container in _statuses(pod):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in CONFIG_WAIT_REASONS:
                return Outcome(
                    Phase.WAITING,
                    Reason.INPUT_NOT_FOUND,
                    f"pod {name} waits ({waiting['reason']}): "
                    f"{waiting.get('message', '').strip()}; create what it names and the run "
                    "goes on",
                )
        if name in mount_failures:
            return Outcome(
                Phase.WAITING,
                Reason.INPUT_NOT_FOUND,
                f"pod {name} cannot mount its volumes (FailedMount): {mount_failures[name]}; "
                "create what it names and the run goes on",
            )
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == (
                "Unschedulable"
            ):
                return Outcome(
                    Phase.PENDING,
                    Reason.UNSCHEDULABLE,
                    f"pod {name} cannot be scheduled: {condition.get('message', '')}",
                )
    return None


def job_outcome(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    mount_failures: Mapping[str, str] = NONE,
    kind: WorkloadKind = JOB,
) -> Outcome:
    """The run's phase from its Job (or JobSet, TrainJob: the same conditions but the one of
    success, and the same spec.suspend) and its pods."""
    name = f"{kind.kind} {job['metadata']['name']}"
    if _condition(job, kind.complete):
        return Outcome(Phase.SUCCEEDED, Reason.SUCCEEDED, f"{name} completed")
    failed = _condition(job, "Failed")
    if failed:
        if failed.get("reason") == "DeadlineExceeded":
            return Outcome(Phase.FAILED, Reason.DEADLINE_EXCEEDED, f"{name} ran past its deadline")
        why = ": ".join(filter(None, [failed.get("reason"), failed.get("message")]))
        return pod_failure(pods) or Outcome(
            Phase.FAILED, Reason.JOB_FAILED, f"{name} failed" + (f" ({why})" if why else "")
        )
    if job.get("spec", {}).get("suspend"):
        return Outcome(Phase.PENDING, Reason.QUEUED, f"the {kind.kind} waits in its Kueue queue")
    pending = [p for p in pods if (p.get("status") or {}).get("phase") == "Pending"]
    pulling = pod_failure(pending)
    if pulling is not None:  # a pod that cannot pull its image never starts: say so now
        return pulling
    blocked = pod_blocked(pods, mount_failures)
    if blocked is not None:
        return blocked
    retry = pod_failure(pods)
    if retry is not None:
        return Outcome(Phase.RUNNING, Reason.RETRYING, f"retrying after a failure: {retry.message}")
    return Outcome(Phase.RUNNING, Reason.JOB_RUNNING, f"{name} is running")
