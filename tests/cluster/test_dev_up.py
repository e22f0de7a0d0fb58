"""README's first command: `crucible dev up` brings up the control plane, the CRDs and the
operator, applies the examples and shows them taken in. Nothing fakes the workloads here:
without a model store their pods wait, unscheduled, and the status says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT


@pytest.mark.cluster
def test_dev_up_shows_the_examples_reconciled(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.cli.main",
            "dev",
            "up",
            "--once",
            "--workdir",
            str(tmp_path / "dev"),
            "--examples",
            str(EXAMPLES / "nitro"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if "crucible.dev/" in line]
    shown = {row[0]: row[1] for row in rows if row[1] != "created"}  # the table, not apply
    # What references another resource waits for it; the rest has its Job created.
    started = {"Pending", "Running"}
    assert shown.pop("modelmerge.crucible.dev/mistral-wizardmath") in started
    assert shown.pop("ragindex.crucible.dev/nitro-docs") in started
    assert shown == {
        "evalrun.crucible.dev/nitro-benchmark": "Waiting",
        "finetunejob.crucible.dev/nitro-sft": "Waiting",
        "finetunejob.crucible.dev/stealth-dpo": "Waiting",
        "modelmerge.crucible.dev/stealth-merge": "Waiting",
    }
    # Every process it started is gone: nothing listens on its control plane any more.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "dev")], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""
