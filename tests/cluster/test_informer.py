"""The engine's informers on the real API server: a watch that the API server ends every
second resumes where it was and misses nothing; a version the API server no longer keeps is
refused (410), the collection is listed again, and what is gone is handed on as DELETED."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import REGISTRY

from crucible.controllers.informer import Collection, Informer
from crucible.controllers.kube import Kube, client_configuration
from crucible.devcluster.cluster import LocalCluster


def config_map(name: str, namespace: str, value: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"v": value}}


def watches() -> float:
    return (
        REGISTRY.get_sample_value("crucible_kube_requests_total", {"verb": "WATCH", "code": "200"})
        or 0.0
    )


def test_a_watch_ended_every_second_resumes_and_misses_nothing(
    cluster: LocalCluster, namespace: str
) -> None:
    seen: dict[str, str | None] = {}  # name → its data as last handed on; None: deleted

    def handle(kind: str | None, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if name.startswith("cm-"):
            seen[name] = None if kind == "DELETED" else obj["data"]["v"]

    async def scenario() -> None:
        kube = Kube(client_configuration(str(cluster.kubeconfig)))
        collection = Collection("v1", "ConfigMap", "configmaps", namespace=namespace)
        before = watches()
        informer = asyncio.create_task(Informer(kube, collection, handle, timeout_seconds=1).run())
        try:
            for i in range(12):
                await kube.create(config_map(f"cm-{i}", namespace, "0"))
                if i % 3 == 0:
                    await kube.patch("v1", "ConfigMap", namespace, f"cm-{i}", {"data": {"v": "1"}})
                if i % 4 == 0:
                    await kube.delete("v1", "ConfigMap", namespace, f"cm-{i}")
                await asyncio.sleep(0.3)
            expected = {
                f"cm-{i}": None if i % 4 == 0 else ("1" if i % 3 == 0 else "0") for i in range(12)
            }
            for _ in range(100):
                if seen == expected:
                    break
                await asyncio.sleep(0.1)
            assert seen == expected
            assert watches() - before >= 3  # the API server ended it at least twice meanwhile
        finally:
            informer.cancel()
            await kube.close()

    asyncio.run(scenario())


def test_a_version_no_longer_kept_is_listed_again_and_the_gone_are_deleted(
    cluster: LocalCluster, namespace: str
) -> None:
    """An informer that stopped while the API server was replaced, and the ConfigMaps changed,
    watches again from its old version: the new API server no longer keeps it (410), so the
    informer lists again, and hands on as DELETED what it knew and the list no longer has."""
    handed: list[tuple[str | None, str]] = []
    collection = Collection("v1", "ConfigMap", "configmaps", namespace=namespace)

    async def follow(informer: Informer, until: tuple[str | None, str]) -> None:
        kube = Kube(client_configuration(str(cluster.kubeconfig)))
        informer.source = kube
        task = asyncio.create_task(informer.run())
        try:
            for _ in range(200):
                if until in handed:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"{until} not handed on: {handed}")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await kube.close()

    def handle(kind: str | None, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] in ("a", "b", "c"):
            handed.append((kind, obj["metadata"]["name"]))

    cluster.kubectl_apply([config_map(n, namespace, "1") for n in ("a", "b")])
    informer = Informer(None, collection, handle)  # type: ignore[arg-type]
    asyncio.run(follow(informer, (None, "b")))
    cluster.kubectl("delete", "configmap", "b", "-n", namespace)
    cluster.kubectl_apply([config_map("c", namespace, "1")])
    cluster.restart_apiserver()
    handed.clear()
    asyncio.run(follow(informer, ("DELETED", "b")))
    assert sorted(handed, key=str) == [("DELETED", "b"), (None, "a"), (None, "c")]
