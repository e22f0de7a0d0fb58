"""Operator-wide set-up: configuration, the API client, the engine and leader election."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from crucible.config import ConfigError, OperatorConfig
from crucible.controllers.engine import Engine
from crucible.controllers.kube import Kube, client_configuration
from crucible.controllers.leader import LeaderElector
from crucible.controllers.registry import CONTROLLERS
from crucible.controllers.reports import publish_endpoint, serve_reports
from crucible.controllers.watches import start_informers


class NoDiffBase(kopf.DiffBaseStorage):
    """Crucible has event handlers only, no change-detecting ones: kopf's per-event deep
    copy of every body to diff it (most of the operator's CPU at scale) is skipped."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    try:
        memo.config = config = OperatorConfig.from_env().with_report_ca()
    except ConfigError as error:
        raise kopf.PermanentError(str(error)) from None
    settings.persistence.diffbase_storage = NoDiffBase()
    # One line per watch event ("Handler … succeeded") would be most of the log: the engine
    # logs what users act on (phase transitions, errors).
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    memo.kube = kube = Kube(client_configuration())
    memo.engine = engine = Engine(kube, config, CONTROLLERS)
    engine.start()
    # The namespaces `crucible operator` was told to watch (kopf's own scope), else the
    # configured ones; none: all of them.
    namespaces = memo.get("namespaces")
    memo.informers = start_informers(
        kube, engine, config.watch_namespaces if namespaces is None else namespaces
    )
    if config.report_tls_dir is not None:
        memo.reports = await serve_reports(engine, config)
    publishes = config.report_service is not None and config.pod_ip is not None

    def lead(leading: bool) -> None:
        engine.lead(leading)
        publishing = memo.get("publishing")
        if publishing is not None:
            publishing.cancel()
        if leading and publishes:
            memo.publishing = asyncio.create_task(publish_endpoint(kube, config))

    if config.leader_election_namespace is None:
        lead(True)
    else:
        memo.elector = elector = LeaderElector(kube, config)
        memo.election = asyncio.create_task(elector.run(lead))


@kopf.on.cleanup()
async def shut_down(memo: kopf.Memo, **_: Any) -> None:
    election = memo.get("election")
    if election is not None:
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        with contextlib.suppress(Exception):  # best effort: the Lease expires anyway
            await memo.elector.release()
    publishing = memo.get("publishing")
    if publishing is not None:
        publishing.cancel()
    reports = memo.get("reports")
    if reports is not None:
        await reports.cleanup()
    for informer in memo.informers:
        informer.cancel()
    await asyncio.gather(*memo.informers, return_exceptions=True)
    await memo.engine.stop()
    await memo.kube.close()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches log in with the engine's credentials (client_configuration): one path
    for both, read when the operator logs in and again when the API server refuses a token
    (a rotated ServiceAccount token)."""
    configuration = client_configuration()
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    scheme, _space, token = (header or "").rpartition(" ")  # RFC 7235: "Bearer <token>"
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=settings.networking.trust_env,
    )
