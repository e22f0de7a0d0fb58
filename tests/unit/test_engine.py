"""The reconcile engine's pure parts: the work queue's guarantees, the reverse index of
references, typed status that refuses a misspelt field, and the child cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from crucible.api.common import Phase, Reason, RunStatus
from crucible.api.kinds import FINE_TUNE_JOB, MODEL_MERGE
from crucible.config import OperatorConfig
from crucible.controllers.cache import ChildCache
from crucible.controllers.engine import Engine, WorkQueue
from crucible.controllers.lifecycle import Context, status_of
from crucible.controllers.registry import CONTROLLERS
from crucible.resources.common import Owner, labels
from crucible.resources.status import comparable, merge_patch


def test_a_key_is_queued_once_and_never_handed_to_two_workers() -> None:
    async def scenario() -> None:
        queue = WorkQueue()
        key = ("ModelMerge", "ns", "m")
        queue.add(key)
        queue.add(key)
        assert len(queue) == 1
        taken = await queue.get()
        queue.add(key)  # changed while a worker holds it: not handed out again yet
        assert len(queue) == 0
        queue.done(taken)  # ... but queued again once that worker is done
        assert len(queue) == 1
        assert await queue.get() == key
        queue.done(key)
        assert len(queue) == 0

    asyncio.run(scenario())


def test_delayed_adds_keep_the_earliest_deadline() -> None:
    async def scenario() -> None:
        queue = WorkQueue()
        key = ("EvalRun", "ns", "e")
        queue.add_after(key, 10)
        queue.add_after(key, 0.05)
        queue.add_after(key, 5)
        assert await asyncio.wait_for(queue.get(), timeout=1) == key

    asyncio.run(scenario())


def body(kind: str, name: str, spec: dict[str, Any], rv: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "crucible.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": rv},
        "spec": spec,
    }


FTJ_SPEC = {
    "baseModel": {"modelRef": {"kind": "ModelMerge", "name": "late"}},
    "dataset": {"configMap": {"name": "qa", "key": "qa.csv"}},
}
MM_SPEC = {"method": "linear", "models": [{"uri": "hf://o/a"}, {"uri": "hf://o/b"}]}


def test_a_referenced_resource_or_configmap_wakes_the_runs_that_name_it() -> None:
    async def scenario() -> None:
        engine = Engine(None, OperatorConfig(), CONTROLLERS)  # type: ignore[arg-type]
        engine.run_changed("FineTuneJob", None, body("FineTuneJob", "a", FTJ_SPEC))
        engine.run_changed("FineTuneJob", None, body("FineTuneJob", "b", FTJ_SPEC))
        while len(engine.queue):
            engine.queue.done(await engine.queue.get())
        engine.run_changed("ModelMerge", "ADDED", body("ModelMerge", "late", MM_SPEC))
        woken = {(await engine.queue.get())[2] for _ in range(len(engine.queue))}
        assert woken == {"late", "a", "b"}
        for name in woken:
            engine.queue.done(("ModelMerge" if name == "late" else "FineTuneJob", "ns", name))
        qa = {"metadata": {"name": "qa", "namespace": "ns"}}
        engine.config_map_changed(qa)
        assert {(await engine.queue.get())[2] for _ in range(2)} == {"a", "b"}
        # A spec that stops naming it stops being woken by it.
        engine.run_changed(
            "FineTuneJob",
            "MODIFIED",
            body("FineTuneJob", "b", {**FTJ_SPEC, "dataset": {"uri": "s3://b/k"}}, rv="2"),
        )
        assert ("ns", "ConfigMap", "qa") in engine.dependents
        assert engine.dependents[("ns", "ConfigMap", "qa")] == {("FineTuneJob", "ns", "a")}
        # An older event never replaces a newer view.
        engine.run_changed("FineTuneJob", "MODIFIED", body("FineTuneJob", "b", FTJ_SPEC, rv="1"))
        assert engine.runs[("FineTuneJob", "ns", "b")]["metadata"]["resourceVersion"] == "2"

    asyncio.run(scenario())


def test_the_engine_keeps_runs_without_managed_fields_or_kubectl_s_copy() -> None:
    async def scenario() -> None:
        engine = Engine(None, OperatorConfig(), CONTROLLERS)  # type: ignore[arg-type]
        applied = body("ModelMerge", "m", MM_SPEC)
        applied["metadata"] |= {
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"spec": {}}',
                "team": "nlp",
            },
        }
        engine.run_changed("ModelMerge", "ADDED", applied)
        kept = engine.runs[("ModelMerge", "ns", "m")]
        assert "managedFields" not in kept["metadata"]
        assert kept["metadata"]["annotations"] == {"team": "nlp"}
        assert kept["spec"] == applied["spec"] and kept["metadata"]["uid"]

    asyncio.run(scenario())


def test_children_map_back_to_their_run_even_with_a_hashed_name_label() -> None:
    async def scenario() -> None:
        engine = Engine(None, OperatorConfig(), CONTROLLERS)  # type: ignore[arg-type]
        long_name = "m" * 80
        engine.run_changed("ModelMerge", None, body("ModelMerge", long_name, MM_SPEC))
        engine.queue.done(await engine.queue.get())
        owner = Owner(MODEL_MERGE, long_name, "ns", "uid")
        job = {
            "kind": "Job",
            "metadata": {
                "name": "j",
                "namespace": "ns",
                "labels": labels(owner, "merge"),
                "resourceVersion": "5",
                "managedFields": [{"manager": "x"}],
            },
            "spec": {"suspend": False, "template": {"spec": {}}},
            "status": {"active": 1},
        }
        engine.child_changed("ADDED", job)
        assert await engine.queue.get() == ("ModelMerge", "ns", long_name)
        seen = engine.children.children("ns", owner.label).get("Job", "j")
        assert seen is not None
        assert "managedFields" not in seen["metadata"] and "template" not in seen["spec"]

    asyncio.run(scenario())


def test_the_echo_of_the_operator_s_own_write_queues_no_reconcile() -> None:
    """A reconcile stores what it created or patched at once; the watch event that brings the
    same version back has nothing new for that run. It still wakes the runs that wait on it."""

    async def scenario() -> None:
        engine = Engine(None, OperatorConfig(), CONTROLLERS)  # type: ignore[arg-type]
        engine.run_changed("FineTuneJob", None, body("FineTuneJob", "a", FTJ_SPEC))
        merge = body("ModelMerge", "late", MM_SPEC, rv="3")
        engine.run_changed("ModelMerge", "ADDED", merge)
        while len(engine.queue):
            engine.queue.done(await engine.queue.get())
        owner = Owner(MODEL_MERGE, "late", "ns", "uid-late")
        job = {
            "kind": "Job",
            "metadata": {
                "name": "late-merge",
                "namespace": "ns",
                "labels": labels(owner, "merge"),
                "resourceVersion": "4",
            },
            "status": {},
        }
        assert engine.children.store(job)  # what create_one notes of the Job it made
        engine.child_changed("ADDED", job)
        assert len(engine.queue) == 0
        engine.child_changed(
            "MODIFIED", {**job, "metadata": {**job["metadata"], "resourceVersion": "6"}}
        )
        assert await engine.queue.get() == ("ModelMerge", "ns", "late")
        engine.queue.done(("ModelMerge", "ns", "late"))
        # The status write: the engine keeps the patched object, then its echo arrives.
        patched = {**merge, "metadata": {**merge["metadata"], "resourceVersion": "7"}}
        engine.runs[("ModelMerge", "ns", "late")] = patched
        engine.run_changed("ModelMerge", "MODIFIED", patched)
        assert [await engine.queue.get() for _ in range(len(engine.queue))] == [
            ("FineTuneJob", "ns", "a")
        ]

    asyncio.run(scenario())


def test_the_child_cache_never_goes_back_to_an_older_version() -> None:
    cache = ChildCache()
    owner = Owner(FINE_TUNE_JOB, "t", "ns", "uid")
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "labels": labels(owner, "train")},
    }
    cache.store(
        {
            **pod,
            "metadata": {
                **pod["metadata"],
                "resourceVersion": "9",
                "annotations": {"crucible.dev/task": "{...}"},
            },
            "status": {"phase": "Running"},
        }
    )
    cache.store(
        {
            **pod,
            "metadata": {**pod["metadata"], "resourceVersion": "7"},
            "status": {"phase": "Pending"},
        }
    )
    (seen,) = cache.children("ns", "t").of_kind("Pod")
    assert seen["status"]["phase"] == "Running"
    assert "annotations" not in seen["metadata"]  # the task it carries is never read back
    cache.remove(pod)
    assert not list(cache.children("ns", "t").of_kind("Pod"))


def context(kind_body: dict[str, Any]) -> Context:
    return Context(
        kube=None,  # type: ignore[arg-type]
        config=OperatorConfig(),
        owner=Owner.of(MODEL_MERGE, kind_body),
        body=kind_body,
        current=RunStatus(),
        lookup_run=None,  # type: ignore[arg-type]
        children=ChildCache().children("ns", "m"),
        created=lambda _: None,
    )


def test_status_is_typed_a_misspelt_field_fails_instead_of_being_pruned() -> None:
    ctx = context(body("ModelMerge", "m", MM_SPEC))
    status = status_of(ctx, Phase.RUNNING, Reason.JOB_RUNNING, "running", {"job_name": "m-merge"})
    assert status.to_api()["jobName"] == "m-merge"
    assert status.to_api()["conditions"][0]["reason"] == "JobRunning"
    with pytest.raises(ValidationError, match="jobNam"):
        status_of(ctx, Phase.RUNNING, Reason.JOB_RUNNING, "running", {"jobNam": "m-merge"})
    # A field of another kind is as wrong as a typo.
    with pytest.raises(ValidationError, match="base_model_uri"):
        status_of(ctx, Phase.RUNNING, Reason.JOB_RUNNING, "running", {"base_model_uri": "x"})


def test_an_unchanged_status_compares_equal_whatever_its_timestamps() -> None:
    ctx = context(body("ModelMerge", "m", MM_SPEC))
    first = status_of(ctx, Phase.RUNNING, Reason.JOB_RUNNING, "running", {})
    ctx.current = first
    again = status_of(ctx, Phase.RUNNING, Reason.JOB_RUNNING, "running", {})
    assert comparable(again) == comparable(first)
    done = status_of(ctx, Phase.SUCCEEDED, Reason.SUCCEEDED, "done", {})
    assert comparable(done) != comparable(first)
    assert done.completion_time is not None


def test_the_status_patch_removes_what_the_new_status_no_longer_has() -> None:
    before = {
        "phase": "Running",
        "gate": {"holds": True, "generation": 5},
        "promoted": {"generation": 5, "gate": {"holds": True}, "modelUri": "hf://o/a"},
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    after = {
        "phase": "Running",
        "promoted": {"generation": 6, "modelUri": "hf://o/a"},
        "conditions": [{"type": "Ready", "status": "True"}],
        "url": "http://assistant-vllm.team.svc:8000/v1",
    }
    patch = merge_patch(before, after)
    assert patch == {
        "gate": None,
        "promoted": {"generation": 6, "gate": None},
        "url": "http://assistant-vllm.team.svc:8000/v1",
    }
    assert merge_patch(after, after) == {}
