"""`crucible report evalrun/NAME` and `crucible report experiment/NAME`: the HTML report of
a run, from its status and the statuses of the runs its models were made from; with the model
store at hand (`--store`, `crucible dev up`'s .dev/store by default), also its per-question
grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crucible.api.kinds import EVAL_RUN, EXPERIMENT
from crucible.cli.status import custom_objects, list_resources
from crucible.metrics.report import Answered, evalrun_report, experiment_report, lineage

DEV_STORE = Path(".dev/store")
RESULTS_FILE = "results.jsonl"


def read_answers(path: Path) -> list[Answered]:
    """The scored answers of an EvalRun's results.jsonl (the first round of each)."""
    answers = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("round", 0) == 0:
            answered = Answered(row["model"], bool(row["rag"]), row["question"], row["correct"])
            answers.append(answered)
    return answers


def render(
    kind: str, name: str, namespace: str, items: list[dict[str, Any]], store: Path | None
) -> str:
    """The page of the run `kind/name` among `items` (every Crucible resource of the
    namespace)."""
    found = next(
        (i for i in items if i["kind"].lower() == kind and i["metadata"]["name"] == name), None
    )
    if found is None:
        raise LookupError(f"{kind}/{name} not found in namespace {namespace}")
    if kind == "evalrun":
        results = store / namespace / "evalruns" / name / RESULTS_FILE if store else None
        return evalrun_report(
            name,
            namespace,
            EVAL_RUN.read_status(found),
            answers=read_answers(results) if results and results.exists() else None,
            lineage=lineage(found["spec"].get("models", []), items),
        )
    candidates = found["spec"].get("candidates", [])
    return experiment_report(
        name, namespace, EXPERIMENT.read_status(found), lineage=lineage(candidates, items)
    )


def write_report(
    target: str, namespace: str, output: Path | None, kubeconfig: str | None, store: Path | None
) -> Path:
    kind, _, name = target.partition("/")
    kind = kind.lower()
    if kind not in (EVAL_RUN.singular, EXPERIMENT.singular) or not name:
        raise ValueError(f"{target}: name evalrun/NAME or experiment/NAME")
    items = list_resources(custom_objects(kubeconfig), namespace)
    store = store if store is not None else DEV_STORE if DEV_STORE.is_dir() else None
    path = output or Path(f"{kind}-{name}.html")
    path.write_text(render(kind, name, namespace, items, store))
    return path
