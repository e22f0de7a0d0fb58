"""The informer's guarantees, against a scripted API server: it lists then watches from the
list's resourceVersion, resumes a watch that ends from the last version it saw (a bookmark's
too), lists again when that version is gone and says DELETED of what the new list no longer
has, and retries errors with a growing backoff. The real API server's witness is
tests/cluster/test_informer.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from crucible.controllers.informer import MAX_BACKOFF_SECONDS, Collection, Informer
from crucible.controllers.kube import ApiError

PODS = Collection("v1", "Pod", "pods", namespace="ns", label_selector="a=b")


class ScriptEndedError(BaseException):
    """The script has nothing more to answer: ends the informer's loop, which lets it through
    as it lets a cancellation through (it goes on after any Exception)."""


def pod(name: str, rv: str, **labels: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": rv}
    return {"metadata": {**meta, "labels": labels}}


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": {"apiVersion": "v1", "kind": "Pod", **obj}}


class Script:
    """Answers lists and watches in order: each a value, or an exception to raise."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None
    ) -> dict[str, Any] | None:
        self.calls.append(("list", dict(params or {})))
        return self._next(self.lists)  # type: ignore[no-any-return]

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("watch", dict(params)))
        for item in self._next(self.watches):
            if isinstance(item, Exception):
                raise item
            yield item

    @staticmethod
    def _next(answers: list[Any]) -> Any:
        if not answers:
            raise ScriptEndedError
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def run(script: Script) -> tuple[list[tuple[str | None, str]], list[float]]:
    """Run an informer until the script ends: the (type, name) it handed on, and its sleeps."""
    handed: list[tuple[str | None, str]] = []
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def handle(kind: str | None, obj: dict[str, Any]) -> None:
        assert (obj["apiVersion"], obj["kind"]) == ("v1", "Pod")
        handed.append((kind, obj["metadata"]["name"]))

    informer = Informer(script, PODS, handle, timeout_seconds=7, sleep=sleep)
    with pytest.raises(ScriptEndedError):
        asyncio.run(informer.run())
    return handed, slept


def test_it_lists_every_page_then_watches_from_the_lists_version() -> None:
    script = Script(
        lists=[
            {"items": [pod("a", "3")], "metadata": {"continue": "next", "resourceVersion": "9"}},
            {"items": [pod("b", "8")], "metadata": {"resourceVersion": "10"}},
        ],
        watches=[[event("MODIFIED", pod("a", "11")), event("ADDED", pod("c", "12"))]],
    )
    handed, slept = run(script)
    assert handed == [(None, "a"), (None, "b"), ("MODIFIED", "a"), ("ADDED", "c")]
    (_, first), (_, second), (_, watch), _ = script.calls
    assert first == {"labelSelector": "a=b", "limit": "500"}
    assert second == {**first, "continue": "next"}
    assert watch["resourceVersion"] == "10" and watch["timeoutSeconds"] == "7"
    assert watch["allowWatchBookmarks"] == "true" and watch["labelSelector"] == "a=b"
    assert slept == []


def test_a_watch_that_ends_resumes_from_the_last_version_seen_without_listing() -> None:
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}
    script = Script(
        lists=[{"items": [], "metadata": {"resourceVersion": "5"}}],
        watches=[[event("ADDED", pod("a", "6"))], [bookmark], []],
    )
    handed, _ = run(script)
    assert handed == [("ADDED", "a")]
    versions = [params["resourceVersion"] for call, params in script.calls if call == "watch"]
    assert versions == ["5", "6", "20", "20"]
    assert [call for call, _ in script.calls].count("list") == 1


def test_a_gone_version_lists_again_and_what_is_no_longer_listed_was_deleted() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    script = Script(
        lists=[
            {
                "items": [pod("a", "3"), pod("b", "4", run="x")],
                "metadata": {"resourceVersion": "4"},
            },
            {"items": [pod("a", "30")], "metadata": {"resourceVersion": "31"}},
            {"items": [pod("a", "30")], "metadata": {"resourceVersion": "40"}},
        ],
        watches=[[gone], [ApiError(410, "WATCH", "/pods", "Expired")]],
    )
    deleted: list[dict[str, Any]] = []
    informer = Informer(
        script,
        PODS,
        lambda kind, obj: deleted.append(obj) if kind == "DELETED" else None,
        sleep=lambda _: asyncio.sleep(0),
    )
    with pytest.raises(ScriptEndedError):
        asyncio.run(informer.run())
    (stub,) = deleted  # b, once: the third list has nothing more to say of it
    assert stub["kind"] == "Pod" and stub["metadata"]["name"] == "b"
    assert stub["metadata"]["namespace"] == "ns" and stub["metadata"]["labels"] == {"run": "x"}
    assert [c for c, _ in script.calls] == ["list", "watch", "list", "watch", "list", "watch"]
    # Each watch from the version of the list before it, whatever that list found deleted.
    versions = [params["resourceVersion"] for c, params in script.calls if c == "watch"]
    assert versions == ["4", "31", "40"]


def test_errors_are_retried_with_a_backoff_that_grows_and_resets_once_it_works() -> None:
    refused = ApiError(500, "GET", "/pods", "etcd timeout")
    script = Script(
        lists=[refused, None, {"items": [], "metadata": {"resourceVersion": "1"}}],
        watches=[
            aiohttp.ClientConnectionError("reset"),
            *[[TimeoutError()] for _ in range(4)],
            [event("ADDED", pod("a", "2"))],
            [ValueError("not JSON")],
        ],
    )
    handed, slept = run(script)
    assert handed == [("ADDED", "a")]
    assert slept == [1, 2, 4, 8, 16, MAX_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, 1]


def test_a_failing_handler_or_a_malformed_event_stops_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(
        lists=[{"items": [pod("a", "1")], "metadata": {"resourceVersion": "1"}}],
        watches=[
            [event("ADDED", pod("bad", "2")), event("ADDED", pod("c", "3"))],
            [{"type": "ADDED", "object": {"kind": "Pod"}}],  # no metadata at all
            [event("ADDED", pod("d", "5"))],
        ],
    )
    handed: list[str] = []
    slept: list[float] = []

    def handle(kind: str | None, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] == "bad":
            raise KeyError("a bug in the handler")
        handed.append(obj["metadata"]["name"])

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with pytest.raises(ScriptEndedError):
        asyncio.run(Informer(script, PODS, handle, sleep=sleep).run())
    assert handed == ["a", "c", "d"]
    assert slept == [1]  # the malformed event only: the handler's failure was its own
    assert "handling ADDED Pod ns/bad failed" in caplog.text
    versions = [params["resourceVersion"] for c, params in script.calls if c == "watch"]
    assert versions == ["1", "3", "3", "5"]
