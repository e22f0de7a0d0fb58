"""The report endpoint's rules: who a reviewed token speaks for, whether its pod is the run's,
and each run's request budget."""

from __future__ import annotations

from typing import Any

import pytest

from crucible.api.kinds import FINE_TUNE_JOB
from crucible.resources.common import Owner, labels, report_audience, report_path
from crucible.resources.reports import (
    POD_NAME_EXTRA,
    POD_UID_EXTRA,
    BoundPod,
    RefusedError,
    RequestBudget,
    report_endpoint_slice,
    reporting_job,
)

OWNER = Owner(FINE_TUNE_JOB, "tuned", "team", "run-uid")
BOUND = BoundPod("team", "tuned-train-abc", "pod-uid")


def job(uid: str = "job-uid", owner_uid: str = OWNER.uid) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "tuned-train",
            "uid": uid,
            "ownerReferences": [{"kind": "FineTuneJob", "uid": owner_uid, "controller": True}],
        }
    }


def pod(**changes: Any) -> dict[str, Any]:
    meta = {
        "name": BOUND.pod,
        "uid": BOUND.pod_uid,
        "labels": labels(OWNER, "train"),
        "ownerReferences": [
            {"kind": "Job", "name": "tuned-train", "uid": "job-uid", "controller": True}
        ],
    }
    return {"metadata": {**meta, **changes}}


def reviewed(username: str, **extra: list[str]) -> dict[str, Any]:
    return {"authenticated": True, "user": {"username": username, "extra": extra}}


def test_the_audience_and_path_name_the_namespace_kind_and_run() -> None:
    assert report_audience(OWNER) == "crucible.dev/reports/team/finetunejobs/tuned"
    assert report_path(OWNER) == "/reports/v1/team/finetunejobs/tuned"


def test_a_reviewed_token_speaks_for_a_service_account_and_its_bound_pod() -> None:
    status = reviewed(
        "system:serviceaccount:team:default",
        **{POD_NAME_EXTRA: ["tuned-train-abc"], POD_UID_EXTRA: ["pod-uid"]},
    )
    assert BoundPod.of(status) == BOUND
    with pytest.raises(RefusedError, match="not a ServiceAccount's"):
        BoundPod.of(reviewed("alice"))
    with pytest.raises(RefusedError, match="bound to no pod"):
        BoundPod.of(reviewed("system:serviceaccount:team:default"))


def test_the_runs_own_pod_reports_for_its_job() -> None:
    assert reporting_job(OWNER, BOUND, pod(), job()) == "tuned-train"


@pytest.mark.parametrize(
    ("bound", "found", "its_job", "why"),
    [
        (BoundPod("elsewhere", BOUND.pod, BOUND.pod_uid), pod(), job(), "namespace elsewhere"),
        (BOUND, None, job(), "no longer exists"),
        (BOUND, pod(uid="new-pod-uid"), job(), "no longer exists"),
        (
            BOUND,
            pod(labels=labels(Owner(FINE_TUNE_JOB, "other", "team", "x"), "train")),
            job(),
            "not one of",
        ),
        (BOUND, pod(ownerReferences=[]), job(), "not run by a Job"),
        (BOUND, pod(), job(uid="another-job"), "not run by a Job"),
        (BOUND, pod(), None, "not run by a Job"),
        (BOUND, pod(), job(owner_uid="an-earlier-run"), "is not FineTuneJob tuned's"),
    ],
)
def test_a_pod_that_is_not_the_runs_is_refused(
    bound: BoundPod, found: dict[str, Any] | None, its_job: dict[str, Any] | None, why: str
) -> None:
    with pytest.raises(RefusedError, match=why):
        reporting_job(OWNER, bound, found, its_job)


def test_each_run_has_its_own_request_budget() -> None:
    now = [0.0]
    budget = RequestBudget(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [budget.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.take("a") == pytest.approx(0.5)
    assert budget.take("b") == 0.0  # another run is not held back
    now[0] = 0.5
    assert budget.take("a") == 0.0
    now[0] = 100.0  # refilled to the burst, not beyond
    assert [budget.take("a") for _ in range(4)][-1] > 0


def test_the_report_slice_names_the_active_replica_and_belongs_to_its_service() -> None:
    service = {"metadata": {"name": "crucible-reports", "namespace": "crucible", "uid": "s-1"}}
    slice_ = report_endpoint_slice(service, "crucible-7d9f-x", "fd00::7", 8443)
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "crucible-reports"
    assert slice_["metadata"]["ownerReferences"][0]["uid"] == "s-1"
    assert slice_["addressType"] == "IPv6"
    (endpoint,) = slice_["endpoints"]
    assert endpoint["addresses"] == ["fd00::7"]
    assert endpoint["targetRef"]["name"] == "crucible-7d9f-x"
    assert report_endpoint_slice(service, "p", "10.0.0.3", 8443)["addressType"] == "IPv4"
