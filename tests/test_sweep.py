"""`tprog sweep`: the sweep-file schema, the plan it expands to, the reports, and end to end
on a 4-run sweep: in parallel, killed and resumed, and on a local Ray instance on loopback."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.test_cli import tprog
from tprog.cli import cli
from tprog.errors import ConfigError
from tprog.sweep import plan_sweep, run_sweep
from tprog.sweep_report import csv_text, reference_for, summary_text
from tprog.sweep_worker import ProgramFigures, RunOutcome, program_figures

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Tiny runs: sort over inputs of at most 5 tokens (155 distinct), a checkpoint every epoch.
TINY = {
    "data.size": 100,
    "data.max_length": 5,
    "train.epochs": 30,
    "train.checkpoint_every": 1,
    "model.d_mlp": 8,
    "model.n_heads_num": 0,
    "model.n_mlps_num": 0,
}
FOUR_RUNS = {"name": "tiny", "task": "sort", "base": TINY, "grid": {"model.n_layers": [1, 2]}}
RUN_NAMES = ["layers1-s0", "layers1-s1", "layers2-s0", "layers2-s1"]


def write_sweep(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "sweep.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows without the wall time, which is the one column that may differ between runs."""
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("spec") / "tiny.yaml", {**FOUR_RUNS, "seeds": 2})


@pytest.fixture(scope="module")
def local_sweep(sweep_file, tmp_path_factory) -> Path:
    """The 4-run sweep, uninterrupted, two worker processes: the reference for the others."""
    out = tmp_path_factory.mktemp("local") / "out"
    result = run_sweep(sweep_file, out=out, workers=2)
    assert (result.n_runs, result.n_trained, result.n_failed) == (4, 4, 0)
    return out


# --- the sweep file ---------------------------------------------------------------------------

BAD_FILES = [
    ({"task": "sort", "seeds": 1, "grdi": {}}, "unknown field 'grdi'"),
    ({"task": "sort"}, "has no 'seeds' field"),
    ({"task": "sort", "seeds": "three"}, "'seeds' must be a number of seeds or a list"),
    ({"task": "sort", "seeds": 0}, "`seeds` must be a positive count"),
    ({"task": "nosuchtask", "seeds": 1}, "unknown task 'nosuchtask'"),
    ({"task": "sort", "tasks": ["hist"], "seeds": 1}, "either `task:` or `tasks:`"),
    ({"task": "sort", "seeds": 1, "base": {"model.n_layer": 2}}, "did you mean 'model.n_layers'"),
    ({"task": "sort", "seeds": 1, "grid": {"model.n_layers": [2, 0]}}, "'model.n_layers' must"),
    ({"task": "sort", "seeds": 1, "grid": {"model.n_layers": []}}, "has no values"),
    ({"task": "sort", "seeds": 1, "grid": {"model.n_layers": [2, 2]}}, "share the folder"),
    ({"task": "sort", "seeds": 1, "grid": {"seed": [1, 2]}}, "only `seeds:` may set"),
    ({"task": "sort", "seeds": 1, "per_task": {"hist": {}}}, "per_task names 'hist'"),
    ({"task": "sort", "seeds": 1, "name": "../up"}, "plain folder name"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_FILES)
def test_a_bad_sweep_file_fails_before_anything_runs(spec, message, tmp_path) -> None:
    path = write_sweep(tmp_path / "bad.yaml", spec)
    with pytest.raises(ConfigError) as error:
        run_sweep(path, out=tmp_path / "out")
    text = str(error.value)
    assert message in text and str(path) in text
    assert "\n" not in text
    assert not (tmp_path / "out").exists()


def test_a_sweep_file_that_is_not_a_mapping(tmp_path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- sort\n- hist\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        plan_sweep(path)


def test_plan_order_slugs_and_layers(tmp_path) -> None:
    spec = {
        "tasks": ["sort", "hist"],
        "base": {"train.epochs": 7, "model.d_mlp": 16},
        "per_task": {"hist": {"train.epochs": 9}},
        "grid": {
            "model.d_mlp": [8, 32],
            "heads": [{"model.n_heads_cat": 1, "model.n_heads_num": 2}],
        },
        "seeds": [3, 1],
    }
    plan, out = plan_sweep(write_sweep(tmp_path / "mine.yaml", spec))
    assert out == Path("sweeps/mine") and plan.name == "mine"
    slugs = ["d_mlp8-heads_cat1-heads_num2", "d_mlp32-heads_cat1-heads_num2"]
    names = [
        f"{task}/{slug}-s{seed}" for task in ("sort", "hist") for slug in slugs for seed in (3, 1)
    ]
    assert [run.name for run in plan.runs] == names
    assert [run.run_dir for run in plan.runs][:2] == [
        Path("runs/sort", f"{slugs[0]}-s3"),
        Path("runs/sort", f"{slugs[0]}-s1"),
    ]
    first, last = plan.runs[0].config, plan.runs[-1].config
    assert (first.seed, first.train.epochs, first.model.d_mlp) == (3, 7, 8)  # grid beats base
    assert (last.seed, last.train.epochs, last.model.d_mlp) == (1, 9, 32)  # per_task beats base
    assert (last.model.n_heads_cat, last.model.n_heads_num) == (1, 2)  # tied keys
    assert first.model.n_layers == 3 and last.model.n_layers == 1  # each task's paper config
    varying = (
        "model.n_layers",
        "model.n_mlps_cat",
        "model.n_mlps_num",
        "model.d_mlp",
        "train.epochs",
    )
    assert plan.varying_keys == varying
    assert plan_sweep(tmp_path / "mine.yaml")[0] == plan  # deterministic


def test_the_shipped_sweep_files_are_the_paper_settings() -> None:
    counts = {"table1": 35, "table3": 35, "grid": 280, "induction": 5}
    references = {}
    for name, count in counts.items():
        plan, _ = plan_sweep(CONFIGS / f"{name}.yaml")
        assert len(plan.runs) == count and {run.seed for run in plan.runs} == set(range(5))
        references[name] = {run.name: reference_for(run.config) for run in plan.runs}
    sources = {
        name: {ref and ref.source for ref in refs.values()} for name, refs in references.items()
    }
    assert sources == {
        "table1": {"Table 1"},
        "table3": {"Table 3 (categorical only)"},
        "grid": {"Table 1", None},
        "induction": {"§4.1"},
    }
    # The grid holds Table 1's configuration of every task but hist (one layer: not in it).
    in_grid = sorted(name for name, ref in references["grid"].items() if ref and "s0" in name)
    assert in_grid == [
        "double_hist/layers3-heads_cat2-heads_num2-mlps_cat1-mlps_num1-s0",
        "dyck1/layers3-heads_cat4-heads_num4-mlps_cat1-mlps_num1-s0",
        "dyck2/layers3-heads_cat2-heads_num2-mlps_cat2-mlps_num2-s0",
        "most_freq/layers3-heads_cat4-heads_num4-mlps_cat2-mlps_num2-s0",
        "reverse/layers3-heads_cat4-heads_num4-mlps_cat1-mlps_num1-s0",
        "sort/layers3-heads_cat4-heads_num4-mlps_cat2-mlps_num2-s0",
    ]


def program(code_lines: int, wrong_inputs: int) -> ProgramFigures:
    return ProgramFigures(
        code_lines, 400, 30, 30, "whole domain", 19530, wrong_inputs, 0.99, 1.0, code_lines - 60
    )


def test_summary_takes_the_best_seed_by_validation(tmp_path) -> None:
    plan, _ = plan_sweep(CONFIGS / "table1.yaml")
    outcomes = {  # reverse: seeds 1 and 2 tie on validation; the lower seed's test counts
        0: RunOutcome("ok", 10.0, 0.99, 0.90, 0.80, 1.0, program(101, 1)),
        1: RunOutcome("ok", 10.0, 0.99, 0.95, 0.85, 1.0, program(102, 2)),
        2: RunOutcome("ok", 10.0, 0.99, 0.95, 0.99, 1.0, program(103, 3)),
        3: RunOutcome("failed: training diverged at epoch 3", 1.0),
    }
    summary = summary_text(plan, outcomes)
    reverse = "| reverse | default | 3/5 | 85.00 | 85.00 | 80.00–99.00 | 1.000000 | 99.79 | 99.89 |"
    assert reverse + " Table 1 |" in summary
    # The programs table shows the same seed's program, and only configurations that have one.
    programs = summary.split("## Programs")[1]
    row = "| reverse | default | 1 | 400 → 102 | 42 | 30 → 30 | whole domain (19,530 inputs) |"
    assert row + " 99.00 | 2 | 1.000000 |" in programs and "| sort |" not in programs
    assert "| sort | default | 0/5 | — | — | — | — | 99.83 | 100.00 | Table 1 |" in summary
    assert "- `runs/reverse/default-s3`: failed: training diverged at epoch 3" in summary
    rows = list(csv.reader(csv_text(plan, outcomes).splitlines()))
    assert rows[0][:2] == ["task", "data.max_length"] and len(rows) == 5


def test_program_figures_only_from_complete_results() -> None:
    results = {
        "size": {
            "code_lines": {"simplified": 90, "unsimplified": 120, "learned": 30},
            "modules": {
                "simplified": {"categorical heads": 2, "categorical MLPs": 1},
                "unsimplified": {"categorical heads": 4, "categorical MLPs": 1},
            },
        },
        "verification": {
            "mode": "uniform sample of 100", "n_inputs": 100, "n_wrong": 3,
            "token_accuracy": 0.97, "simplified_vs_unsimplified": 1.0,
        },
    }  # fmt: skip
    assert program_figures(results) == ProgramFigures(
        90, 120, 3, 5, "uniform sample of 100", 100, 3, 0.97, 1.0, 30
    )
    # Decompiled before the runtime was told apart: no figure for the program's own lines.
    del results["size"]["code_lines"]["learned"]
    assert program_figures(results).learned_lines is None
    assert program_figures({"agreement": None}) is None  # a baseline: no program
    assert program_figures({**results, "verification": None}) is None


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_parallel_sweep_writes_its_reports(local_sweep) -> None:
    rows = read_rows(local_sweep)
    assert list(rows[0]) == [
        "task", "model.n_layers", "seed", "run_dir", "train_accuracy", "val_accuracy",
        "test_accuracy", "agreement", "code_lines", "code_lines_unsimplified", "modules",
        "modules_unsimplified", "verified_on", "verified_inputs", "wrong_inputs",
        "verified_accuracy", "simplified_agreement", "learned_lines", "seconds", "status",
    ]  # fmt: skip
    assert [row["run_dir"] for row in rows] == [f"runs/sort/{name}" for name in RUN_NAMES]
    assert [(row["model.n_layers"], row["seed"]) for row in rows] == [
        ("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")
    ]  # fmt: skip
    for row in rows:
        results = json.loads((local_sweep / row["run_dir"] / "results.json").read_text())
        assert row["status"] == "ok" and float(row["agreement"]) == 1.0
        assert float(row["test_accuracy"]) == results["test_accuracy"]
        size, verification = results["size"], results["verification"]
        assert int(row["code_lines"]) == size["code_lines"]["simplified"]
        assert 0 < int(row["learned_lines"]) == size["code_lines"]["learned"] < 100
        assert int(row["modules_unsimplified"]) == sum(size["modules"]["unsimplified"].values())
        assert (row["verified_on"], row["verified_inputs"]) == ("whole domain", "155")
        assert int(row["wrong_inputs"]) == verification["n_wrong"]
        assert float(row["simplified_agreement"]) == 1.0
        record = json.loads((local_sweep / row["run_dir"] / "sweep_run.json").read_text())
        assert row["seconds"] == f"{record['seconds']:.2f}"
    summary = (local_sweep / "summary.md").read_text()
    assert "4 of 4 runs finished, 0 failed" in summary
    assert "| sort | layers1 | 2/2 |" in summary and "| sort | layers2 | 2/2 |" in summary
    assert "## Programs" in summary and "| whole domain (155 inputs) |" in summary


@pytest.mark.slow
@pytest.mark.parametrize("victims", ["process group", "sweep process only"])
def test_a_killed_sweep_reruns_only_the_missing_runs(
    victims, sweep_file, local_sweep, tmp_path
) -> None:
    """Killing the sweep process alone must take its workers with it: otherwise they train on,
    holding their runs' locks, and the rerun could not resume those runs."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "tprog", "sweep", str(sweep_file), "--workers", "2"]
    process = subprocess.Popen(
        [*command, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, to kill with its workers
    )
    runs = [out / "runs" / "sort" / name for name in RUN_NAMES]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        finished = [run for run in runs if (run / "sweep_run.json").exists()]
        started = [run for run in runs if (run / "checkpoint.pt").exists()]
        if len(finished) >= 2 and len(started) > len(finished):
            break
        time.sleep(0.005)
    if victims == "process group":
        os.killpg(process.pid, signal.SIGKILL)
    else:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = [run for run in runs if (run / "sweep_run.json").exists()]
    assert 1 <= len(finished) < 4, "the sweep finished before it could be killed"
    resumable = [run for run in runs if (run / "checkpoint.pt").exists() and run not in finished]
    assert resumable, "no run was caught between two checkpoints"
    stamps = {run: (run / "model.pt").stat().st_mtime_ns for run in finished}

    rerun = tprog(*command[3:], "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    missing = f"running {4 - len(finished)} ({len(resumable)} from a checkpoint)"
    assert f"{len(finished)} already done; {missing}" in rerun.stderr
    assert {run: (run / "model.pt").stat().st_mtime_ns for run in finished} == stamps
    assert comparable(read_rows(out)) == comparable(read_rows(local_sweep))


@pytest.fixture
def ray_on_loopback(monkeypatch):
    """A Ray instance in this process, reachable on 127.0.0.1 only."""
    # Ray's own switch (named for macOS/Windows) for a single-machine instance on loopback;
    # read when Ray is imported, so set first.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray", reason="the Ray backend is optional: pip install 'tprog[ray]'")
    from tprog.sweep_worker import cpu_count

    context = ray.init(num_cpus=cpu_count(), include_dashboard=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.mark.slow
def test_the_ray_backend_writes_the_same_rows(sweep_file, local_sweep, ray_on_loopback, tmp_path):
    assert ray_on_loopback.startswith("127.0.0.1:")
    out = tmp_path / "ray"
    result = tprog(
        "sweep", str(sweep_file), "--backend", "ray", "--address", ray_on_loopback,
        "--workers", "2", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert comparable(read_rows(out)) == comparable(read_rows(local_sweep))


@pytest.mark.slow
def test_dry_run_lists_the_runs_and_which_are_done(sweep_file, local_sweep) -> None:
    result = CliRunner().invoke(
        cli, ["sweep", str(sweep_file), "--out", str(local_sweep), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"tiny: 4 runs in {local_sweep} (4 done, 0 to resume, 0 to start)",
        *(f"done   sort/{name}" for name in RUN_NAMES),
    ]


def test_cli_dry_run_of_a_new_sweep_and_a_misplaced_address(sweep_file, tmp_path) -> None:
    runner = CliRunner()
    fresh = runner.invoke(cli, ["sweep", str(sweep_file), "--out", str(tmp_path), "--dry-run"])
    assert fresh.exit_code == 0, fresh.output
    assert fresh.stdout.splitlines()[1:3] == ["start  sort/layers1-s0", "start  sort/layers1-s1"]
    bad = runner.invoke(cli, ["sweep", str(sweep_file), "--address", "127.0.0.1:1"])
    assert isinstance(bad.exception, ConfigError) and "--backend ray" in str(bad.exception)


@pytest.mark.slow
def test_failed_runs_are_recorded_and_the_command_fails(tmp_path) -> None:
    spec = {"task": "sort", "base": TINY, "grid": {"model.d_var": [4, 5]}, "seeds": 1}
    path = write_sweep(tmp_path / "failing.yaml", spec)
    result = tprog("sweep", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: 2 of 2 runs failed; see ")
    rows = read_rows(tmp_path / "out")
    assert [row["model.d_var"] for row in rows] == ["4", "5"]
    for row in rows:
        assert row["status"].startswith(f"failed: model.d_var={row['model.d_var']} is smaller")
