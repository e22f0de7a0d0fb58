"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it: two
replicas may run, one reconciles. The standby keeps its view of every resource current, so
it takes over as soon as the leader's Lease expires (or at once when the leader stops
cleanly and gives the Lease up)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from crucible.config import OperatorConfig
from crucible.controllers.kube import ApiError, KubeClient, path_of

logger = logging.getLogger("crucible.leader")


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: KubeClient, config: OperatorConfig) -> None:
        assert config.leader_election_namespace is not None
        self.kube = kube
        self.namespace = config.leader_election_namespace
        self.name = config.leader_election_lease
        self.identity = config.identity
        self.duration = config.lease_duration
        self.leading = False
        # When this replica last saw the Lease change (or renewed it): expiry is judged on
        # its own clock, never on another machine's timestamps.
        self._observed: tuple[str | None, float] = (None, 0.0)
        self._renewed = 0.0

    def _lease(self, existing: dict[str, Any] | None, holder: str) -> dict[str, Any]:
        spec = (existing or {}).get("spec") or {}
        taking = spec.get("holderIdentity") != holder
        transitions = spec.get("leaseTransitions", 0) + (1 if taking and existing else 0)
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if existing is not None:
            metadata["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": max(1, round(self.duration)),
                "acquireTime": micro_time() if taking else spec.get("acquireTime"),
                "renewTime": micro_time(),
                "leaseTransitions": transitions,
            },
        }

    async def try_acquire(self) -> bool:
        """One round: renew our Lease, or take it when it is free or expired."""
        lease = await self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        now = time.monotonic()
        if lease is None:  # 409 (ApiError) when another replica created it first
            path = path_of("coordination.k8s.io/v1", "Lease", self.namespace)
            await self.kube.request("POST", path, body=self._lease(None, self.identity))
            return True
        version = lease["metadata"]["resourceVersion"]
        if version != self._observed[0]:
            self._observed = (version, now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds") or self.duration
        expired = now - self._observed[1] > duration
        if holder and holder != self.identity and not expired:
            return False
        await self.kube.replace(self._lease(lease, self.identity))
        return True

    async def run(self, on_change: Any) -> None:
        """Campaign for ever; `on_change(leading)` on every change of leadership."""
        while True:
            try:
                leading = await self.try_acquire()
                if leading:
                    self._renewed = time.monotonic()
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                # A conflict means another replica won this round; any other error: a leader
                # that cannot renew within the Lease's duration steps down.
                if not isinstance(error, ApiError) or error.status != 409:
                    logger.warning("leader election round failed: %s", error)
                leading = self.leading and time.monotonic() - self._renewed < self.duration
            if leading != self.leading:
                self.leading = leading
                logger.info(
                    "%s %s the Lease %s/%s",
                    self.identity,
                    "holds" if leading else "lost",
                    self.namespace,
                    self.name,
                )
                on_change(leading)
            await asyncio.sleep(self.duration / (3 if leading else 5))

    async def release(self) -> None:
        """Give the Lease up on a clean stop, so the standby takes over at once."""
        if not self.leading:
            return
        lease = await self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        released = self._lease(lease, "")
        released["spec"]["leaseDurationSeconds"] = 1
        await self.kube.replace(released)
        self.leading = False
