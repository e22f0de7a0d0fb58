"""`crucible status` and `crucible leaderboard`: the pipeline's progress, then the results per
model — the figures of the EvalRun status, which /metrics exports too."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crucible.api import GROUP, VERSION
from crucible.api.kinds import KINDS

DEV_KUBECONFIG = Path(".dev/cluster/admin.kubeconfig")


def custom_objects(kubeconfig: str | None = None) -> Any:
    """An API client for Crucible's resources: the kubeconfig given, $KUBECONFIG, or the one
    `crucible dev up` wrote."""
    from kubernetes import client, config

    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path is None and DEV_KUBECONFIG.exists():
        path = str(DEV_KUBECONFIG)
    return client.CustomObjectsApi(config.new_client_from_config(path))  # type: ignore[no-untyped-call]


def list_resources(custom: Any, namespace: str) -> list[dict[str, Any]]:
    """Every Crucible resource in the namespace, in the recipe's order."""
    items: list[dict[str, Any]] = []
    for kind in KINDS:
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural)
        items += sorted(listed["items"], key=lambda i: i["metadata"]["creationTimestamp"])
    return items


def _progress(item: dict[str, Any]) -> str:
    status = item.get("status") or {}
    kind = item["kind"]
    if kind == "FineTuneJob" and status.get("progress"):
        p = status["progress"]
        loss = f" loss {p['loss']:.3f}" if p.get("loss") is not None else ""
        return f"step {p.get('step', 0)}/{p.get('totalSteps', '?')}{loss}"
    if kind == "RagIndex" and status.get("chunks") is not None:
        return f"{status.get('documents', 0)} documents, {status['chunks']} chunks"
    if kind == "SyntheticDataset" and status.get("pairs"):
        return f"{status['pairs']['kept']} pairs kept of {status['pairs']['generated']}"
    if kind == "EvalRun" and status.get("bestModel"):
        return f"best {status['bestModel']} {status['bestAccuracy']:.3f}"
    if kind == "EvalRun" and status.get("servers") and status.get("phase") == "Running":
        return f"{len(status['servers'])} vLLM servers"
    return status.get("outputUri") or ""


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def status_table(items: list[dict[str, Any]]) -> str:
    """One line per resource: what it is, its phase, why, and how far it got."""
    rows = []
    for item in items:
        status = item.get("status") or {}
        conditions = status.get("conditions") or []
        ready: dict[str, str] = next((c for c in conditions if c["type"] == "Ready"), {})
        rows.append(
            [
                item["kind"],
                item["metadata"]["name"],
                status.get("phase") or "New",
                ready.get("reason", ""),
                _progress(item),
                ready.get("message", "")[:100] if status.get("phase") != "Succeeded" else "",
            ]
        )
    return _table(["KIND", "NAME", "PHASE", "REASON", "PROGRESS", "MESSAGE"], rows)


def leaderboard_table(items: list[dict[str, Any]]) -> str:
    """Per EvalRun and model: mean accuracy ± sample stddev, CI95, rounds, with/without RAG;
    best first."""
    rows = []
    for item in items:
        if item["kind"] != "EvalRun":
            continue
        results = (item.get("status") or {}).get("results") or []
        for r in sorted(results, key=lambda r: -r["accuracyMean"]):
            rows.append(
                [
                    item["metadata"]["name"],
                    r["model"],
                    "yes" if r["rag"] else "no",
                    f"{r['accuracyMean']:.3f} ± {r['accuracyStddev']:.3f}",
                    f"[{r['ci95Low']:.3f}, {r['ci95High']:.3f}]",
                    str(r["n"]),
                    str(r["questions"]),
                    str(r.get("unparsed", 0)),
                ]
            )
    if not rows:
        return "no EvalRun has results yet"
    header = ["EVALRUN", "MODEL", "RAG", "ACCURACY", "CI95", "N", "QUESTIONS", "UNPARSED"]
    return _table(header, rows)
