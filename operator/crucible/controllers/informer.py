"""A watch of one collection that never misses an event: list, then watch from the list's
resourceVersion, as client-go's reflector does.

The watch resumes from the last resourceVersion it saw (an event's, or a bookmark's) when the
API server ends it or the connection drops; when that version is too old for the API server
(410 Gone), the collection is listed again, and whatever was known before but is no longer
listed is handed on as DELETED. Errors are retried with exponential backoff, forever: the
operator's view heals itself once the API server answers again.

Events go to a plain callback with their type (None for a listed object) and the object,
which carries its apiVersion and kind even where the list did not say them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from crucible.controllers.kube import ApiError

log = logging.getLogger("crucible.watches")

Handler = Callable[[str | None, dict[str, Any]], None]
GONE = 410
LIST_PAGE = 500
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0


class WatchSource(Protocol):
    """What an informer needs of a client: one request, and one streamed watch."""

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None
    ) -> dict[str, Any] | None: ...

    def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]: ...


@dataclass(frozen=True)
class Collection:
    """One collection to watch: a kind in one namespace (or all), through selectors."""

    api_version: str
    kind: str
    plural: str
    namespace: str | None = None
    label_selector: str = ""
    field_selector: str = ""

    @property
    def path(self) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        where = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{prefix}{where}/{self.plural}"

    @property
    def selectors(self) -> dict[str, str]:
        found = {"labelSelector": self.label_selector, "fieldSelector": self.field_selector}
        return {key: value for key, value in found.items() if value}

    def __str__(self) -> str:
        return f"{self.plural} in {self.namespace or 'every namespace'}"


# What is kept of each known object, to say it was deleted should a list no longer show it
# (client-go's DeletedFinalStateUnknown): its name, namespace and labels, which the view of
# the object holds anyway (the same strings and dict, not copies).
Known = tuple[str, str | None, dict[str, str] | None]


def _known(obj: dict[str, Any]) -> Known:
    meta = obj["metadata"]
    return meta["name"], meta.get("namespace"), meta.get("labels")


class Informer:
    def __init__(
        self,
        source: WatchSource,
        collection: Collection,
        handle: Handler,
        *,
        timeout_seconds: int = 300,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.source = source
        self.collection = collection
        self.handle = handle
        self.timeout_seconds = timeout_seconds
        self.sleep = sleep
        self.version: str | None = None  # the resourceVersion to watch from; None: list
        self.known: dict[str, Known] = {}  # by uid

    async def run(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                if self.version is None:
                    await self._list()
                await self._watch()
                backoff = FIRST_BACKOFF_SECONDS
            except Exception as error:
                if isinstance(error, ApiError) and error.status == GONE:
                    # The version to watch from is older than the API server keeps.
                    log.info(
                        "watch of %s: %s is gone; listing again", self.collection, self.version
                    )
                    self.version = None
                    continue
                if isinstance(error, (ApiError, aiohttp.ClientError, TimeoutError, ValueError)):
                    log.warning("watch of %s failed (%s)", self.collection, error)
                else:  # a bug: said loudly, and the watch goes on all the same
                    log.exception("watch of %s failed", self.collection)
                log.warning("watch of %s: again in %.0f s", self.collection, backoff)
                await self.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _hand_on(self, kind: str | None, obj: dict[str, Any]) -> None:
        """One event to the handler; a failure there is the handler's, logged, and stops
        neither this watch nor the events after it."""
        try:
            self.handle(kind, obj)
        except Exception:
            meta = obj.get("metadata") or {}
            log.exception(
                "handling %s %s %s/%s failed",
                kind or "LISTED",
                self.collection.kind,
                meta.get("namespace"),
                meta.get("name"),
            )

    async def _list(self) -> None:
        items: list[dict[str, Any]] = []
        params = {**self.collection.selectors, "limit": str(LIST_PAGE)}
        while True:
            page = await self.source.request("GET", self.collection.path, params=params)
            if page is None:  # the kind is not served (yet): like any error, retried
                raise ApiError(404, "GET", self.collection.path, "not found")
            items.extend(page.get("items") or [])
            listing = page.get("metadata") or {}
            if not listing.get("continue"):
                break
            params["continue"] = listing["continue"]
        listed: dict[str, Known] = {}
        for item in items:
            item.setdefault("apiVersion", self.collection.api_version)
            item.setdefault("kind", self.collection.kind)
            listed[item["metadata"]["uid"]] = _known(item)
            self._hand_on(None, item)
        for uid in self.known.keys() - listed.keys():
            name, namespace, labels = self.known[uid]
            meta = {"name": name, "namespace": namespace, "uid": uid, "labels": labels or {}}
            gone = {"apiVersion": self.collection.api_version, "kind": self.collection.kind}
            self._hand_on("DELETED", {**gone, "metadata": meta})
        self.known = listed
        self.version = listing.get("resourceVersion")

    async def _watch(self) -> None:
        params = {
            **self.collection.selectors,
            "resourceVersion": self.version or "",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.timeout_seconds),
        }
        async for event in self.source.watch(self.collection.path, params):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":  # a Status: 410 when the version is too old
                code = obj.get("code") or 500
                raise ApiError(code, "WATCH", self.collection.path, json.dumps(obj))
            self.version = obj["metadata"]["resourceVersion"]
            if kind == "BOOKMARK":
                continue
            uid = obj["metadata"]["uid"]
            if kind == "DELETED":
                self.known.pop(uid, None)
            else:
                self.known[uid] = _known(obj)
            self._hand_on(kind, obj)
