"""Operator-wide kopf settings."""

from __future__ import annotations

from typing import Any

import kopf

from crucible.api import GROUP
from crucible.config import ConfigError, OperatorConfig
from crucible.controllers.kube import Kube, api_client


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    try:
        memo.config = OperatorConfig.from_env()
    except ConfigError as error:
        raise kopf.PermanentError(str(error)) from None
    memo.kube = Kube(api_client())
    # Keep kopf's bookkeeping in annotations: the status schema is typed and would prune it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = 20  # logging.INFO: events for what users act on
    settings.watching.server_timeout = 60
    settings.execution.max_workers = 8


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, its ServiceAccount; elsewhere the kubeconfig that KUBECONFIG names, read when
    the operator logs in rather than when a client library was imported."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
