"""Reading a Job and its pods the way a user would want it explained: a phase, a reason and
a message that says why (OOMKilled, exit code and termination message, image pull failure,
deadline exceeded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crucible.api.common import Phase

IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    reason: str
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


def pod_failure(pods: list[dict[str, Any]]) -> Outcome | None:
    """The most telling failure among the pods, newest first."""
    ordered = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
    for pod in ordered:
        for container in _statuses(pod):
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_REASONS:
                return Outcome(
                    Phase.FAILED,
                    "ImagePullFailed",
                    f"image {container.get('image')} of container {container['name']} cannot be "
                    f"pulled ({waiting['reason']}): {waiting.get('message', '').strip()}".rstrip(
                        ": "
                    ),
                )
            terminated = state.get("terminated") or {}
            if terminated and terminated.get("exitCode", 0) != 0:
                if terminated.get("reason") == "OOMKilled":
                    return Outcome(
                        Phase.FAILED,
                        "OOMKilled",
                        f"container {container['name']} ran out of memory and was killed "
                        "(exit code 137): raise spec.resources.memory or reduce the batch size",
                    )
                detail = (terminated.get("message") or "").strip()
                return Outcome(
                    Phase.FAILED,
                    "Error",
                    f"container {container['name']} exited with code {terminated['exitCode']}"
                    + (f": {detail[-2000:]}" if detail else ""),
                )
    return None


def job_outcome(job: dict[str, Any], pods: list[dict[str, Any]]) -> Outcome:
    if _condition(job, "Complete"):
        return Outcome(Phase.SUCCEEDED, "Succeeded", f"Job {job['metadata']['name']} completed")
    failed = _condition(job, "Failed")
    if failed:
        if failed.get("reason") == "DeadlineExceeded":
            return Outcome(
                Phase.FAILED,
                "DeadlineExceeded",
                f"Job {job['metadata']['name']} ran past its deadline",
            )
        return pod_failure(pods) or Outcome(
            Phase.FAILED, failed.get("reason") or "JobFailed", failed.get("message") or ""
        )
    if job.get("spec", {}).get("suspend"):
        return Outcome(Phase.PENDING, "Queued", "the Job waits in its Kueue queue")
    pending = [p for p in pods if (p.get("status") or {}).get("phase") == "Pending"]
    for pod in pending:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == (
                "Unschedulable"
            ):
                return Outcome(
                    Phase.PENDING,
                    "Unschedulable",
                    f"pod {pod['metadata']['name']} cannot be scheduled: "
                    f"{condition.get('message', '')}",
                )
    pulling = pod_failure(pending)
    if pulling is not None:  # a pod that cannot pull its image never starts: say so now
        return pulling
    retry = pod_failure(pods)
    if retry is not None:
        return Outcome(Phase.RUNNING, "Retrying", f"retrying after a failure: {retry.message}")
    return Outcome(Phase.RUNNING, "JobRunning", f"Job {job['metadata']['name']} is running")
