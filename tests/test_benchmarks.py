"""The benchmark scripts run and print their figures (never timed here: see benchmarks/).

A script nothing runs rots: `train_throughput.py --profile` once called the training loop with
arguments it no longer took, and nobody knew until a profile was wanted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> tuple[list[dict], str]:
    """(its JSON lines, everything it printed) for one benchmark script."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return records, done.stdout


@pytest.mark.slow
def test_train_throughput_prints_rate_profile_and_floor():
    records, printed = _run("train_throughput.py", "--epochs", "1", "--profile", "--step-cost")
    throughput, step_cost = records
    assert throughput["benchmark"] == "train_throughput"
    assert throughput["examples_per_s"] > 0 and throughput["train_examples"] > 10_000
    assert step_cost["batch_sizes"] == [64, 128, 256, 512]
    assert all(ms > 0 for ms in step_cost["ms_per_step"])
    assert "operator calls per step" in printed and "bmm" in printed
    assert "floor of a step: matrix products" in printed


@pytest.mark.slow
def test_protocol_program_and_memory_benchmarks_print_their_figures(tmp_path):
    run = tmp_path / "sort"
    records, _ = _run("protocol_walltime.py", "--out", str(run), "train.epochs=1")
    (protocol,) = records
    assert protocol["seconds"] >= protocol["epochs_seconds"] > 0
    # the program is faithful however little it learned
    assert protocol["agreement"] == {"code": 1.0, "ir": 1.0, "unsimplified_ir": 1.0}

    records, _ = _run("program_throughput.py", "--run", str(run), "--n", "300")
    (programs,) = records
    assert programs["inputs"] == 300
    for figure in ("module_examples_per_s", "module_batch_examples_per_s"):
        assert programs[figure] > 0
    assert programs["interpreter_examples_per_s"] > 0

    records, _ = _run("peak_memory.py", "--task", "sort", "train.epochs=1")
    (memory,) = records
    assert 50 < memory["peak_rss_mib"] < 4096


def test_bad_input_gets_one_sentence(tmp_path):
    for script, args, sentence in (
        ("train_throughput.py", ("--task", "nosuchtask"), "error: unknown task 'nosuchtask'"),
        ("program_throughput.py", ("--run", str(tmp_path)), "holds no program.py"),
    ):
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0 and not done.stdout
        assert sentence in done.stderr and "Traceback" not in done.stderr


def test_program_throughput_times_a_program_folder_without_its_ir():
    """A program copied out of its run (results/programs/*) has no program.json: the module is
    timed, the interpreter reported as null."""
    folder = BENCHMARKS.parent / "results" / "programs" / "hist-s0-refit"
    records, _ = _run("program_throughput.py", "--run", str(folder), "--n", "200")
    (programs,) = records
    assert programs["module_examples_per_s"] > 0 and programs["module_batch_examples_per_s"] > 0
    assert programs["interpreter_examples_per_s"] is None
