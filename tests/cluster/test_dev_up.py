"""README's first command end to end: `crucible dev up` deploys Crucible with its Helm chart on
the local cluster's real node and runs the quickstart there — merge, fine-tune, RAG index,
vLLM servers, eval, serving — and prints the leaderboard; the figures match the raw answers;
once it stops, nothing is left running and the host is as it was."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crucible.api.evalrun import EvalRunStatus
from crucible.api.experiment import ExperimentStatus
from crucible.devcluster.binaries import find_binaries
from crucible.metrics.report import REPORT_FILE
from crucible.workloads.stats import lead, rate
from tests.browser import blank, open_page
from tests.conftest import EXAMPLES, ROOT
from tests.hoststate import changes, host_state
from tests.report.pages import (
    Key,
    evalrun_figures,
    experiment_figures,
    figures,
    key,
    numbers,
)

NAMESPACE = "crucible-demo"


CLI = [sys.executable, "-m", "crucible.cli.main"]


def dev_up(workdir: Path, examples: str = "quickstart", *extra: str) -> list[str]:
    return [
        *CLI,
        "dev",
        "up",
        "--workdir",
        str(workdir),
        "--examples",
        str(EXAMPLES / examples),
        *extra,
    ]


def leftovers(workdir: Path) -> str:
    found = subprocess.run(
        ["pgrep", "-af", str(workdir)], capture_output=True, text=True, check=False
    ).stdout
    return "\n".join(line for line in found.splitlines() if "pgrep" not in line)


def stopped(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as Ctrl-C: dev up removes what it made. SIGKILL only if it hangs, which would
    leave the cluster's bridge and cgroups behind (and fail the next test's host check)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(180)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def scrape(url: str, timeout: float = 60) -> str:
    """/metrics through dev up's port-forward, which follows the leader: a connection made
    while it moves to a new replica is retried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text: str = response.read().decode()
                return text
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def wait_for_output(
    process: subprocess.Popen[bytes], log: Path, pattern: str, timeout: float
) -> str:
    """The log once `pattern` appears in it; fails if dev up exits or time runs out first."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, text := log.read_text(errors="replace"), re.MULTILINE):
        assert process.poll() is None, f"dev up exited with {process.returncode}:\n{text[-6000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} in {timeout} s:\n{text[-6000:]}"
        time.sleep(1)
    return text


def series(metrics: str, name: str) -> dict[tuple[str, str], float]:
    """quickstart-eval's values of one metric by (model, rag)."""
    found = {}
    for line in metrics.splitlines():
        if line.startswith(name + "{") and 'evalrun="quickstart-eval"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found[(labels["model"], labels["rag"])] = float(line.rsplit(" ", 1)[1])
    return found


def paired(status: dict[str, Any], a: tuple[str, bool], b: tuple[str, bool]) -> dict[str, Any]:
    """The status's paired test of setting `a` against `b` (model, rag), as a minus b."""
    for test in status["pairedTests"]:
        first, second = (test["a"], test["aRag"]), (test["b"], test["bRag"])
        if (first, second) == (a, b):
            return dict(test)
        if (first, second) == (b, a):
            return {
                **test,
                "difference": -test["difference"],
                "ci95Low": -test["ci95High"],
                "ci95High": -test["ci95Low"],
            }
    raise AssertionError(f"no paired test of {a} and {b}: {status['pairedTests']}")


def assert_shown(page: Path, expected: dict[Key, float], screenshot: Path) -> dict[Key, str]:
    """`page` in Chromium: no error, not blank, its figures `expected`; the screenshot is
    kept (README's is one)."""
    seen = open_page(page)
    assert seen.errors == [], page
    assert not blank(seen.screenshot), page
    shown = figures(seen.dom)
    assert numbers(shown) == expected, page
    screenshot.write_bytes(seen.screenshot)
    return shown


@dataclass
class Finished:
    """What `crucible dev up` showed and served once every resource was done."""

    workdir: Path
    output: str
    resources: dict[str, dict[str, Any]]  # "Kind/name" → the object
    metrics: str
    reports: dict[str, Path]  # "kind/name" → what `crucible report kind/name` wrote


def run_until_done(tmp_path: Path, examples: str, timeout: float) -> Finished:
    """`crucible dev up` on `examples` until every resource is done; then its resources and
    its operator's /metrics are read, and it is stopped (leaving nothing behind)."""
    workdir = tmp_path / "dev"
    log = tmp_path / "dev-up.log"
    before = host_state()
    with log.open("wb") as output:
        process = subprocess.Popen(
            dev_up(workdir, examples), stdout=output, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        text = wait_for_output(process, log, r"^all done; still serving", timeout=timeout)
        kubeconfig = re.search(r"^KUBECONFIG=(\S+)", text, re.MULTILINE)
        metrics_url = re.search(r"^metrics: (\S+)", text, re.MULTILINE)
        assert kubeconfig and metrics_url
        kubectl = [str(find_binaries().kubectl), f"--kubeconfig={kubeconfig.group(1)}"]
        listed = json.loads(
            subprocess.run(
                [*kubectl, "get", "crucible", "-n", NAMESPACE, "-o", "json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["items"]
        metrics = scrape(metrics_url.group(1))
        reports = {}
        for item in listed:
            if item["kind"] in ("EvalRun", "Experiment"):
                run = f"{item['kind'].lower()}/{item['metadata']['name']}"
                reports[run] = tmp_path / f"{item['metadata']['name']}.html"
                subprocess.run(
                    [
                        *CLI, "report", run, "-n", NAMESPACE, "-o", str(reports[run]),
                        f"--kubeconfig={kubeconfig.group(1)}", f"--store={workdir / 'store'}",
                    ],
                    check=True,
                    cwd=ROOT,
                )  # fmt: skip
    finally:
        code = stopped(process)
    assert code == 130
    assert not leftovers(workdir)
    assert not changes(before, host_state())
    assert not list((workdir / "store").rglob("*.partial-*"))
    resources = {f"{r['kind']}/{r['metadata']['name']}": r for r in listed}
    return Finished(workdir, text, resources, metrics, reports)


@pytest.mark.cluster
@pytest.mark.timeout(2700)
def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    """The real model through the whole recipe: retrieval lifts the base model, and so does
    the fine-tune (continued pre-training on the docs, merged, then SFT on Q&A pairs), each by
    a margin McNemar's test supports on 40 questions; with retrieval, the fine-tuned model is
    not worse than the base by more than its paired interval allows. The leaderboard shows the
    EvalRun's status and /metrics, and its report in Chromium shows the same figures."""
    done = run_until_done(tmp_path, "quickstart", timeout=2400)
    text, workdir, metrics = done.output, done.workdir, done.metrics
    assert len(done.resources) == 6
    for name in (
        "FineTuneJob/quickstart-variant",
        "ModelMerge/quickstart-merge",
        "FineTuneJob/quickstart-sft",
        "RagIndex/crucible-docs",
        "EvalRun/quickstart-eval",
    ):
        assert done.resources[name]["status"]["phase"] == "Succeeded", name
    status = done.resources["EvalRun/quickstart-eval"]["status"]

    store = workdir / "store" / NAMESPACE
    merged = store / "modelmerges" / "quickstart-merge"
    assert (merged / "config.json").exists() and (merged / "crucible-manifest.json").exists()
    assert (store / "finetunejobs" / "quickstart-sft" / "adapter" / "adapter_config.json").exists()

    # Every answer is in the store: 3 models x with/without RAG x 40 questions, scored once.
    results = store / "evalruns" / "quickstart-eval" / "results.jsonl"
    answers = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(answers) == 3 * 2 * 40
    assert {a["scoring"] for a in answers} == {"LogLikelihood"}

    # The leaderboard shows the status, which /metrics exports; both add up the raw answers.
    header = list(re.finditer(r"^EVALRUN +MODEL +RAG .*$", text, re.MULTILINE))[-1]
    board = text[header.end() :].strip("\n").split("\n\n")[0].splitlines()
    shown = {(row.split()[1], row.split()[2]): row.split() for row in board}
    by_row = {(r["model"], "yes" if r["rag"] else "no"): r for r in status["results"]}
    assert shown.keys() == by_row.keys() and len(shown) == 6
    accuracy = series(metrics, "crucible_eval_accuracy")
    lower = series(metrics, "crucible_eval_accuracy_ci95_lower")
    for setting, row in shown.items():
        r = by_row[setting]
        right = [
            a["correct"] for a in answers if (a["model"], "yes" if a["rag"] else "no") == setting
        ]
        assert r["accuracyMean"] == sum(right) / 40
        assert row[3:6] == [
            "LogLikelihood",
            f"{r['accuracyMean']:.3f}",
            f"[{r['ci95Low']:.3f},",
        ]
        labels = (setting[0], "true" if setting[1] == "yes" else "false")
        assert accuracy[labels] == r["accuracyMean"] and lower[labels] == r["ci95Low"]

    # Retrieval lifts the base model, by a margin its paired interval and McNemar support.
    (lift,) = [
        t
        for t in status["pairedTests"]
        if (t["a"], t["aRag"], t["b"], t["bRag"]) == ("base", True, "base", False)
    ]
    assert lift["difference"] > 0 and lift["ci95Low"] > 0 and lift["pValue"] < 0.05

    # The fine-tune lifts the model without retrieval, and costs nothing measurable with it.
    tuned_alone = paired(status, ("tuned", False), ("base", False))
    assert tuned_alone["difference"] > 0 and tuned_alone["pValue"] < 0.05
    tuned_with_rag = paired(status, ("tuned", True), ("base", True))
    assert tuned_with_rag["ci95High"] >= 0

    # The report, as `crucible report` writes it and as the eval workload left it in the
    # store (whose path dev up printed), shows exactly the status's figures in Chromium.
    printed = re.findall(r"^report: (\S+)$", text, re.MULTILINE)
    assert printed == [str(store / "evalruns" / "quickstart-eval" / REPORT_FILE)]
    expected = evalrun_figures(EvalRunStatus.model_validate(status))
    for page in (done.reports["evalrun/quickstart-eval"], Path(printed[0])):
        assert_shown(page, expected, tmp_path / f"{page.stem}.png")

    # The fine-tuned model is promoted to serving exactly when its gate holds on those figures
    # (with retrieval, its interval above the base model's mean without it).
    serving = done.resources["ModelServing/quickstart-serving"]["status"]
    verdict = serving["gate"]
    (check,) = verdict["checks"]
    tuned, base = by_row[("tuned", "yes")], by_row[("base", "no")]
    assert check["values"] == {
        "candidateCi95Lower": tuned["ci95Low"],
        "referenceMean": base["accuracyMean"],
    }
    assert verdict["holds"] == (tuned["ci95Low"] > base["accuracyMean"])
    if verdict["holds"]:
        assert serving["phase"] == "Running" and serving["readyReplicas"] == 1
        assert serving["promoted"]["gate"] == verdict
        assert serving["models"] == ["crucible-docs-assistant"]
        assert re.search(
            r"^ModelServing +quickstart-serving +Running +Serving +"
            r"crucible-docs-assistant gen 1 \(gate held\), 1/1 ready",
            text,
            re.MULTILINE,
        )
    else:
        assert serving["phase"] == "Failed" and "promoted" not in serving


@pytest.mark.cluster
@pytest.mark.timeout(2400)
def test_experiment_example_runs_end_to_end(tmp_path: Path) -> None:
    """examples/experiment on the real model: every child the search needs, a ranking and a
    held-out verdict that the comparisons left in the model store reproduce exactly, and the
    leaderboard and /metrics showing them. (A 135M judge is no judge: what the ranking says is
    not asserted, only that it is what its comparisons say.)"""
    done = run_until_done(tmp_path, "experiment", timeout=2400)
    search = done.resources["Experiment/base-search"]
    status = search["status"]
    assert status["phase"] == "Succeeded", status
    children = {
        name
        for name, r in done.resources.items()
        if (r["metadata"].get("labels") or {}).get("crucible.dev/name") == "base-search"
    }
    assert children >= {
        f"FineTuneJob/base-search-{c}-{t}"
        for c in ("instruct", "merged")
        for t in ("operate", "build")
    } | {"EvalRun/base-search-operate", "EvalRun/base-search-build", "EvalRun/base-search-measure"}
    assert all(done.resources[c]["status"]["phase"] == "Succeeded" for c in children)

    # The ranking and the verdict are what the comparisons in the store say.
    folder = done.workdir / "store" / NAMESPACE / "experiments" / "base-search"
    spec = search["spec"]
    bootstrap, seed = spec["judge"]["bootstrapSamples"], spec["evaluation"]["seed"]

    def comparisons(job: str) -> list[tuple[str, str, float]]:
        lines = (folder / job / "comparisons.jsonl").read_text().splitlines()
        return [(c["a"], c["b"], c["scoreA"]) for c in map(json.loads, lines)]

    search_comparisons = comparisons("rank")
    assert len(search_comparisons) == status["comparisons"] > 0
    ratings = rate(search_comparisons, bootstrap, seed)
    assert [(r["model"], r["rating"], r["ci95Low"], r["ci95High"]) for r in status["ranking"]] == [
        (r.model, round(r.rating, 3), round(r.ci95_low, 3), round(r.ci95_high, 3)) for r in ratings
    ]
    verdict = status["heldOut"]
    winner = status["ranking"][0]["model"]
    assert verdict["winner"] == winner and verdict["task"] == "measure"
    found = lead(comparisons("verdict"), winner, verdict["runnerUp"], bootstrap, seed)
    assert (verdict["ratingDifference"], verdict["ci95Low"], verdict["holds"]) == (
        round(found.difference, 3),
        round(found.ci95_low, 3),
        found.ci95_low > 0,
    )

    # The leaderboard prints it; /metrics exports it.
    assert re.search(rf"^base-search +1 +{winner} +candidate", done.output, re.MULTILINE)
    assert re.search(r"^base-search +measure +" + winner, done.output, re.MULTILINE)
    assert f'experiment="base-search",model="{winner}"' in done.metrics

    # Its report shows the status's ratings and verdict in Chromium; the rank workload's copy
    # is among the reports dev up printed.
    shown = assert_shown(
        done.reports["experiment/base-search"],
        experiment_figures(ExperimentStatus.model_validate(status)),
        tmp_path / "base-search.png",
    )
    assert shown[key("held-out-holds")] == ("yes" if verdict["holds"] else "no")
    printed = re.findall(r"^report: (\S+)$", done.output, re.MULTILINE)
    rank = done.workdir / "store" / NAMESPACE / "experiments" / "base-search" / "rank"
    assert str(rank / REPORT_FILE) in printed, printed


@pytest.mark.cluster
def test_stopping_dev_up_mid_run_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGTERM (as Ctrl-C's SIGINT) while the fine-tune trains: every process stops, the node's
    container, bridge, mounts and cgroups are gone, no iptables rule or kernel setting of the
    host's has changed, and the store holds no half-written model."""
    workdir = tmp_path / "dev"
    before = host_state()
    log = (tmp_path / "dev-up.log").open("w+")
    process = subprocess.Popen(dev_up(workdir), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 600
        training = re.compile(r"^FineTuneJob\s+quickstart-sft\s+Running", re.MULTILINE)
        while not training.search(Path(log.name).read_text()) and time.monotonic() < deadline:
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            time.sleep(0.5)
        assert training.search(Path(log.name).read_text()), "the fine-tune never started"
    finally:
        code = stopped(process)
    assert code == 130
    assert not leftovers(workdir)
    assert not changes(before, host_state())
    store = workdir / "store" / NAMESPACE
    assert not list((workdir / "store").rglob("*.partial-*"))
    assert not (store / "finetunejobs" / "quickstart-sft" / "adapter").exists()
