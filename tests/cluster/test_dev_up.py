"""README's first command: `crucible dev up` brings up the control plane, the CRDs and the
operator, applies the examples and shows them taken in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT


@pytest.mark.cluster
def test_dev_up_shows_the_examples_taken_in(tmp_path: Path) -> None:
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
    assert shown == {
        "evalrun.crucible.dev/nitro-benchmark": "Pending",
        "finetunejob.crucible.dev/nitro-sft": "Pending",
        "finetunejob.crucible.dev/stealth-dpo": "Pending",
        "modelmerge.crucible.dev/mistral-wizardmath": "Pending",
        "modelmerge.crucible.dev/stealth-merge": "Pending",
        "ragindex.crucible.dev/nitro-docs": "Pending",
    }
    # Every process it started is gone: nothing listens on its control plane any more.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "dev")], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""
