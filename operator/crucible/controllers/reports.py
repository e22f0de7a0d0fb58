"""The report endpoint: workloads POST their reports (progress while they run, results at
their end) over HTTPS, each with a projected ServiceAccount token whose audience names its run.

A request is taken only when a TokenReview that names the run's audience authenticates its
token, and the pod the token is bound to exists, carries the run's labels and is run by the
run's Job (resources/reports.py). Refused requests change nothing, and neither do those that
arrive while the API server cannot check their token (503). What is taken goes to the
engine's view and queues the run: pushing is best-effort, since a run's results are also in its
pod's termination message, read when its Job completes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from crucible.api.kinds import KINDS
from crucible.config import OperatorConfig
from crucible.controllers.engine import Engine
from crucible.controllers.kube import ApiError, KubeClient
from crucible.controllers.lifecycle import FailedError, parse_report
from crucible.metrics import REPORT_REQUESTS
from crucible.resources.common import REPORT_PATH_PREFIX, Owner, report_audience
from crucible.resources.reports import (
    MAX_REPORT_BYTES,
    BoundPod,
    RefusedError,
    RequestBudget,
    controller_of,
    report_endpoint_slice,
    reporting_job,
)

log = logging.getLogger("crucible.reports")
KINDS_BY_PLURAL = {k.plural: k for k in KINDS}
# A token's review is kept this long (kube-apiserver's webhook token authenticator keeps its
# for 2 minutes); the pod it is bound to is checked on every request all the same.
REVIEW_CACHE_SECONDS = 60.0
REVIEW_CACHE_ENTRIES = 10_000
# Per run: a workload reports every few seconds at most.
REQUESTS_PER_SECOND = 2.0
REQUEST_BURST = 10.0
PUBLISH_RETRY_SECONDS = 5.0
# Under the workload's own wait for an answer (REPORT_WRITE_TIMEOUT_SECONDS, 10 s): when the
# API server cannot review a token, the workload hears so and goes on.
VERIFY_TIMEOUT_SECONDS = 5.0


class UnauthenticatedError(ValueError):
    """The token did not pass its TokenReview for the run's audience."""


class ReportEndpoint:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self.budget = RequestBudget(REQUESTS_PER_SECOND, REQUEST_BURST, clock)
        # sha256 of audience and token → (until when, the review's status)
        self._reviews: dict[str, tuple[float, dict[str, Any]]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REPORT_BYTES)
        app.router.add_post(REPORT_PATH_PREFIX + "/{namespace}/{plural}/{name}", self.receive)
        return app

    async def receive(self, request: web.Request) -> web.Response:
        answer = await self._answer(request)
        REPORT_REQUESTS.labels(str(answer.status)).inc()
        if answer.status >= 400:
            log.warning("report refused (%d) for %s: %s", answer.status, request.path, answer.text)
        return answer

    async def _answer(self, request: web.Request) -> web.Response:
        namespace, plural, name = (request.match_info[k] for k in ("namespace", "plural", "name"))
        kind = KINDS_BY_PLURAL.get(plural)
        body = self.engine.runs.get((kind.kind, namespace, name)) if kind else None
        if kind is None or body is None:
            return _reply(404, f"no {plural} {namespace}/{name} is known to this operator")
        owner = Owner.of(kind, body)
        wait = self.budget.take(f"{namespace}/{plural}/{name}")
        if wait:
            return _reply(
                429,
                f"{plural} {namespace}/{name} reports too often; wait {wait:.1f} s",
                {"Retry-After": str(max(1, round(wait)))},
            )
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _reply(401, "a Bearer token is needed: the run's projected ServiceAccount token")
        too_large = _reply(413, f"a report is at most {MAX_REPORT_BYTES} bytes")
        if (request.content_length or 0) > MAX_REPORT_BYTES:
            return too_large
        try:
            async with asyncio.timeout(VERIFY_TIMEOUT_SECONDS):
                job = await self.verify(owner, token)
        except UnauthenticatedError as error:
            return _reply(401, str(error))
        except RefusedError as error:
            return _reply(403, str(error))
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            cause = str(error) or f"no answer within {VERIFY_TIMEOUT_SECONDS:.0f} s"
            return _reply(
                503,
                f"the API server cannot check the token now ({cause}); nothing is taken. Push "
                "again later: a run's final report is also read from its pod's termination "
                "message",
                {"Retry-After": str(round(PUBLISH_RETRY_SECONDS))},
            )
        try:
            report = parse_report(await request.text(), "the pushed report")
        except web.HTTPRequestEntityTooLarge:
            return too_large
        except FailedError as error:
            return _reply(400, error.message)
        if report is None:
            return _reply(400, "the body is empty; send the report's JSON")
        self.engine.report_pushed(owner, job, report)
        return _reply(202, f"the report of Job {job} is taken")

    async def verify(self, owner: Owner, token: str) -> str:
        """The run's Job that the token's pod runs; UnauthenticatedError or RefusedError."""
        audience = report_audience(owner)
        review, fresh = await self.review(token, audience)
        if not review.get("authenticated") or audience not in (review.get("audiences") or []):
            raise UnauthenticatedError(
                f"the token is not valid for audience {audience}: "
                f"{review.get('error') or 'not authenticated'}"
            )
        bound = BoundPod.of(review)
        view = self.engine.children.children(owner.namespace, owner.label)
        # A fresh review found the bound pod itself (the API server checks it exists), so the
        # view may say what it is; a review kept from before may be of a pod deleted since,
        # and so may the view, which lags: then the API server is asked.
        pod = view.get("Pod", bound.pod) if fresh else None
        if pod is None or pod["metadata"].get("uid") != bound.pod_uid:
            pod = await self.engine.kube.get("v1", "Pod", bound.namespace, bound.pod)
        controller = controller_of(pod or {})
        job = None
        if controller.get("kind") == "Job":
            job = view.get("Job", controller["name"]) or await self.engine.kube.get(
                "batch/v1", "Job", owner.namespace, controller["name"]
            )
        return reporting_job(owner, bound, pod, job)

    async def review(self, token: str, audience: str) -> tuple[dict[str, Any], bool]:
        """The status of a TokenReview of `token` for `audience`, and whether it was made just
        now; an authenticated one is kept REVIEW_CACHE_SECONDS."""
        key = hashlib.sha256(f"{audience}\n{token}".encode()).hexdigest()
        now = self.clock()
        cached = self._reviews.get(key)
        if cached is not None and cached[0] > now:
            return cached[1], False
        answer = await self.engine.kube.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]},
            },
        )
        status: dict[str, Any] = (answer or {}).get("status") or {}
        if status.get("authenticated"):
            if len(self._reviews) >= REVIEW_CACHE_ENTRIES:
                self._reviews = {k: v for k, v in self._reviews.items() if v[0] > now}
            self._reviews[key] = (now + REVIEW_CACHE_SECONDS, status)
        return status, True


def _reply(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


def tls_context(folder: Path) -> ssl.SSLContext:
    """The endpoint's serving certificate: tls.crt and tls.key in `folder`, as a
    kubernetes.io/tls Secret (the chart's, or cert-manager's) is mounted."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    return context


async def publish_endpoint(kube: KubeClient, config: OperatorConfig) -> None:
    """Point the report Service's EndpointSlice at this replica, which has just become the
    active one; retried until it is done (or this replica stops leading and cancels it)."""
    assert config.report_service is not None and config.pod_ip is not None
    namespace, _, name = config.report_service.partition("/")
    while True:
        try:
            service = await kube.get("v1", "Service", namespace, name)
            if service is None:
                log.warning("the report Service %s does not exist; pushes cannot arrive", name)
            else:
                endpoints = report_endpoint_slice(
                    service, config.identity, config.pod_ip, config.report_port
                )
                await kube.request(
                    "PATCH",
                    f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}",
                    body=endpoints,
                    params={"fieldManager": "crucible-operator", "force": "true"},
                    content_type="application/apply-patch+yaml",
                )
                log.info("reports go to %s (%s) now", config.identity, config.pod_ip)
                return
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("cannot point the report Service %s at this replica: %s", name, error)
        await asyncio.sleep(PUBLISH_RETRY_SECONDS)


async def serve_reports(engine: Engine, config: OperatorConfig) -> web.AppRunner:
    """Serve the endpoint on CRUCIBLE_HTTP_ADDRESS:CRUCIBLE_REPORT_PORT with the certificate
    in CRUCIBLE_REPORT_TLS_DIR; the runner's cleanup() stops it."""
    assert config.report_tls_dir is not None
    runner = web.AppRunner(ReportEndpoint(engine).app(), access_log=None)
    await runner.setup()
    context = tls_context(Path(config.report_tls_dir))
    await web.TCPSite(runner, config.http_address, config.report_port, ssl_context=context).start()
    log.info("serving reports on https://%s:%d", config.http_address, config.report_port)
    return runner
