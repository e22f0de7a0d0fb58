"""`crucible operator`: kopf plus one HTTP server for /healthz and /metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading

import kopf
from aiohttp import web
from kopf._core.engines.peering import Identity
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

import crucible.controllers  # noqa: F401  (registers the handlers)
from crucible.config import ConfigError, OperatorConfig

log = logging.getLogger("crucible.operator")


def _http_app(ready: threading.Event) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="starting\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def _serve(
    namespaces: list[str], cluster_wide: bool, address: str, port: int, identity: str
) -> None:
    ready = threading.Event()
    runner = web.AppRunner(_http_app(ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    log.info("serving /healthz and /metrics on %s:%d", address, port)
    ready_flag = asyncio.Event()

    async def mark_ready() -> None:
        await ready_flag.wait()
        ready.set()

    marker = asyncio.create_task(mark_ready())
    try:
        await kopf.operator(
            standalone=True,
            clusterwide=cluster_wide,
            namespaces=namespaces,
            ready_flag=ready_flag,
            # kopf would otherwise make one from the user's name, which a numeric user without
            # a passwd entry (a pod's runAsUser) does not have.
            identity=Identity(identity),
            # The same scope for the engine's own watches of the runs' children.
            memo=kopf.Memo(namespaces=() if cluster_wide else tuple(namespaces)),
        )
    finally:
        marker.cancel()
        await runner.cleanup()


def run_operator(namespaces: list[str], cluster_wide: bool) -> int:
    """Run until interrupted. Scope: the given namespaces, else CRUCIBLE_WATCH_NAMESPACES
    (comma-separated), else every namespace."""
    try:
        config = OperatorConfig.from_env()
    except ConfigError as error:
        print(f"crucible operator: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not namespaces and not cluster_wide:
        namespaces = list(config.watch_namespaces)
    cluster_wide = cluster_wide or not namespaces
    # What the imports made lives as long as the process: out of the collector's way, a full
    # collection scans only the runs' views (at 1,000 runs a pause of ~40 ms instead of ~90).
    gc.freeze()
    asyncio.run(
        _serve(namespaces, cluster_wide, config.http_address, config.http_port, config.identity)
    )
    return 0
