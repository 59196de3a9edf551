"""The `tprog` command end to end on tiny configs, and its answers to bad input."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tprog.codegen import load_program_module
from tprog.data import build_dataset
from tprog.rundir import load_run

TINY = ["data.size=300", "train.epochs=3", "model.d_mlp=8", "--quiet"]


def tprog(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``tprog ARGS`` in a subprocess, with the two torch threads of the tests in this one
    (conftest): a CLI run must follow the trajectory an in-process run of the tests does."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "tprog", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "hist"
    result = tprog("train", "hist", "--out", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    return out


def test_train_writes_the_run_directory(run_dir: Path) -> None:
    for name in (
        "config.json",
        "vocab.json",
        "model.pt",
        "metrics.jsonl",
        "results.json",
        "program_unsimplified.json",
        "program.json",
        "program.py",
    ):
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert results["agreement"] == {"unsimplified_ir": 1.0, "ir": 1.0, "code": 1.0}
    verification = results["verification"]
    assert verification["mode"] == "whole domain" and verification["n_inputs"] == 335_922
    assert verification["simplified_vs_unsimplified"] == 1.0
    assert 0.0 <= results["test_accuracy"] <= 1.0
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2, 3]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["d_var"] == 8 and config["model"]["n_layers"] == 1  # hist's paper config


def test_decompile_is_deterministic(run_dir: Path) -> None:
    before = (run_dir / "program.py").read_bytes(), (run_dir / "program.json").read_bytes()
    result = tprog("decompile", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "faithfulness" in result.stdout
    assert (
        (run_dir / "program.py").read_bytes(),
        (run_dir / "program.json").read_bytes(),
    ) == before


def test_program_names_each_variable_after_its_module(run_dir: Path) -> None:
    """``num_attn_0_1`` is numerical head 1 of layer 0 and calls ``num_predicate_0_1``;
    ``mlp_0_0`` calls ``table_0_0``; the classifier's data stays in the weights file."""
    program = json.loads((run_dir / "program.json").read_text())
    modules = program["modules"]
    source = (run_dir / "program.py").read_text()
    assert modules
    for module in modules:
        kind, layer, number = re.fullmatch(
            r"((?:num_)?(?:attn|mlp))_(0)_(\d)", module["name"]
        ).groups()
        function = kind.replace("attn", "predicate").replace("mlp", "table")
        assert f"    {module['name']} = " in source
        assert f"def {function}_{layer}_{number}(" in source
    weights = json.loads((run_dir / "program_weights.json").read_text())
    order = [variable["name"] for variable in program["variables"]]  # creation order
    assert weights["terms"] == [name for name in order if name in weights["terms"]]
    assert weights["terms"] == list(program["classifier"]["terms"])
    assert "TERMS = (" not in source


def test_run_agrees_between_run_dir_and_program_file(run_dir: Path, tmp_path: Path) -> None:
    tokens = ["<s>", "1", "2", "1"]
    from_ir = tprog("run", str(run_dir), *tokens)
    # From another working directory, as a user would run a program they were sent.
    from_code = tprog("run", str((run_dir / "program.py").resolve()), *tokens, cwd=tmp_path)
    assert from_ir.returncode == 0 and from_code.returncode == 0, from_ir.stderr + from_code.stderr
    assert from_ir.stdout == from_code.stdout
    assert len(from_ir.stdout.split()) == len(tokens)


def test_the_usage_line_shows_a_test_input(run_dir: Path) -> None:
    """The docstring's example call is an input of the task (from the test split), not a few
    tokens of the vocabulary, and the program runs it."""
    docstring = " ".join((run_dir / "program.py").read_text().split('"""')[1].split())
    shown = ast.literal_eval(re.search(r"for example run\((\[.*?\])\)", docstring)[1])
    run = load_run(run_dir)
    test = build_dataset(run.task, run.config).test
    tokens = run.vocab.tokens
    inputs = {
        tuple(tokens[i] for i in row[:n]) for row, n in zip(test.ids, test.lengths, strict=True)
    }
    assert tuple(shown) in inputs and shown[0] == "<s>" and len(shown) <= 8
    assert len(load_program_module(run_dir / "program.py").run(shown)) == len(shown)


def test_eval_reports_model_and_program(run_dir: Path) -> None:
    result = tprog("eval", str(run_dir), "--split", "val")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["split"] == "val" and report["agreement"] == 1.0
    assert report["model_accuracy"] == report["program_accuracy"]


def test_tasks_lists_worked_examples() -> None:
    result = tprog("tasks")
    assert result.returncode == 0, result.stderr
    for name in (
        "reverse",
        "sort",
        "hist",
        "double_hist",
        "most_freq",
        "dyck1",
        "dyck2",
        "induction",
    ):
        assert f"{name}:" in result.stdout
    assert result.stdout.count("input :") == result.stdout.count("target:") >= 8


def test_existing_run_directory_is_not_overwritten(run_dir: Path) -> None:
    result = tprog("train", "hist", "--out", str(run_dir), *TINY)
    assert result.returncode == 2 and "--overwrite" in result.stderr


BAD_TRAIN = [
    (["nosuchtask"], "unknown task 'nosuchtask'"),
    (["hist", "model.n_layer=2"], "did you mean 'model.n_layers'"),
    (["hist", "model.n_layers=abc"], "'model.n_layers'"),
    (["hist", "model.n_layers=0"], "'model.n_layers'"),
    (["hist", "train.lr=-1"], "'train.lr'"),
    (["hist", "model.d_var=4"], "smaller than the vocabulary"),
    (["hist", "notakeyvalue"], "KEY=VALUE"),
    (["hist", "--config", "/nonexistent/config.yaml"], "cannot read config file"),
]


@pytest.mark.parametrize(("args", "message"), BAD_TRAIN)
def test_bad_training_input_gets_one_clear_sentence(args, message, tmp_path: Path) -> None:
    result = tprog("train", *args, "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_run_input_gets_one_clear_sentence(run_dir: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone"  # a program.py copied without its runtime
    lone.mkdir()
    for name in ("program.py", "program_weights.json"):
        shutil.copy(run_dir / name, lone / name)
    cases = [
        (["run", str(run_dir), "<s>", "9"], "not in the vocabulary"),
        (["run", str(run_dir), "<s>", *["1"] * 8], "context holds 8"),
        (["run", str(run_dir / "program.py"), "<s>", "zzz"], "zzz"),
        (["run", str(run_dir / "program.py"), "<s>", *["1"] * 8], "8"),
        (["run", "/nonexistent/run", "<s>"], "does not exist"),
        (["decompile", "/nonexistent/run"], "does not exist"),
        (["eval", "/nonexistent/run"], "does not exist"),
        (["run", str(lone / "program.py"), "<s>"], "needs 'tprog_runtime.py' beside it"),
    ]
    for args, message in cases:
        result = tprog(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
