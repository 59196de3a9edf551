"""End to end: real training learns the task, and the program it yields is faithful.

Marked slow (about a minute each on 2 CPU cores); `.ci/run` still runs them.
"""

import json
from pathlib import Path

import pytest

from tests.test_cli import tprog


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "overrides", "minimum"),
    [
        ("hist", ["train.epochs=40"], 0.98),  # paper config otherwise: 1 layer, 2+2 heads
        # 3 layers on a short schedule: 0.88 here (chance is ~0.2); the floor leaves room for
        # other machines' float rounding to change the trajectory.
        ("reverse", ["train.epochs=60", "data.size=5000"], 0.75),
    ],
)
def test_training_learns_and_the_program_is_faithful(task, overrides, minimum, tmp_path: Path):
    out = tmp_path / task
    result = tprog("train", task, "--out", str(out), "--quiet", *overrides)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] >= minimum, results
    assert results["program_test_accuracy"] == results["test_accuracy"]
    assert results["agreement"] == {"unsimplified_ir": 1.0, "ir": 1.0, "code": 1.0}
