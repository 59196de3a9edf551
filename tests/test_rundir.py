"""A run directory that is missing, truncated or from something else fails with one sentence."""

import errno
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_cli import tprog as cli
from tprog import rundir
from tprog import train as training
from tprog.checkpoint import CHECKPOINT
from tprog.errors import RunDirError
from tprog.pipeline import (
    decompile_dir,
    evaluate_dir,
    resume_and_decompile,
    run_tokens,
    train_and_decompile,
)
from tprog.rundir import load_run, write_atomic
from tprog.tasks import task_config
from tprog.train import TrainingDiverged, train

TINY = {"data.size": 200, "train.epochs": 1, "model.d_mlp": 8}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for task in ("hist", "double_hist"):
        out[task] = root / task
        overrides = {**TINY, "model.n_layers": 1}
        train_and_decompile(task_config(task, overrides), out[task], progress=False)
    return out


@pytest.fixture
def run_copy(runs, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs["hist"], tmp_path / "copy"))


def bad_checkpoints(run: Path, other: Path) -> dict[str, bytes]:
    blob = (run / "model.pt").read_bytes()
    return {
        "truncated": blob[: len(blob) // 2],
        "random bytes": bytes(range(256)) * 4,
        "empty": b"",
        "other task": (other / "model.pt").read_bytes(),
    }


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "empty", "other task"])
def test_bad_checkpoints_are_named(runs, run_copy: Path, kind: str) -> None:
    (run_copy / "model.pt").write_bytes(bad_checkpoints(run_copy, runs["double_hist"])[kind])
    with pytest.raises(RunDirError, match=r"model\.pt") as info:
        load_run(run_copy).load_model()
    if kind == "other task":
        assert "task 'double_hist'" in str(info.value)


def test_checkpoint_of_another_architecture(run_copy: Path) -> None:
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["n_heads_cat"] += 1
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="does not match the architecture"):
        load_run(run_copy).load_model()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("config.json", b"{not json", "corrupt"),
        ("vocab.json", b'{"tokens": 3}', "corrupt"),
        ("run.json", b'{"format_version": 99}', "run format 99"),
    ],
)
def test_corrupt_run_files_are_named(run_copy: Path, name: str, data: bytes, message: str) -> None:
    (run_copy / name).write_bytes(data)
    with pytest.raises(RunDirError, match=message) as info:
        load_run(run_copy)
    assert name in str(info.value)


def test_missing_directory_and_files(run_copy: Path, tmp_path: Path) -> None:
    for call in (decompile_dir, evaluate_dir):
        with pytest.raises(RunDirError, match="does not exist"):
            call(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunDirError, match="not a tprog run directory"):
        decompile_dir(tmp_path / "plain")
    (run_copy / "program.json").unlink()
    with pytest.raises(RunDirError, match=r"program\.json is missing"):
        run_tokens(run_copy, ["<s>", "1"])
    (run_copy / "model.pt").unlink()
    with pytest.raises(RunDirError, match=r"model\.pt is missing"):
        decompile_dir(run_copy)


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b'{"round": 0}\n{"round": 1, "n_wr', 2),  # a write cut short
        (b'{"round": 0}\n[1, 2]\n', 2),  # JSON, but not a record
        (b"\n", 1),
    ],
)
def test_corrupt_logs_are_named_with_their_line(tmp_path: Path, content: bytes, line: int) -> None:
    log = tmp_path / "refinement.jsonl"
    log.write_bytes(content)
    with pytest.raises(RunDirError, match=rf"refinement\.jsonl is corrupt: line {line} "):
        rundir.read_log(log)
    log.write_bytes(b"\xff\xfe")
    with pytest.raises(RunDirError, match=r"refinement\.jsonl is corrupt \(not a UTF-8"):
        rundir.read_log(log)


def test_an_unreadable_run_file_is_not_called_corrupt(run_copy: Path) -> None:
    (run_copy / "config.json").unlink()
    (run_copy / "config.json").mkdir()  # reading it fails with the OS's reason
    with pytest.raises(RunDirError, match=r"cannot read .*config\.json: "):
        rundir.load_run(run_copy)


@pytest.mark.parametrize("log", ["refinement.jsonl", "pruning.jsonl"])
def test_cli_refuses_a_corrupt_log(run_copy: Path, log: str) -> None:
    (run_copy / log).write_text('{"round": 0, "n_wrong"')
    result = cli("decompile", str(run_copy))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {run_copy / log} is corrupt: line 1 is not a JSON record."
    ]


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "other task", "other architecture"])
def test_cli_commands_refuse_bad_checkpoints(runs, tmp_path: Path, kind: str) -> None:
    run = Path(shutil.copytree(runs["hist"], tmp_path / "run"))
    if kind == "other architecture":  # the weights stay; the run now asks for another shape
        config = json.loads((run / "config.json").read_text())
        config["model"]["n_heads_cat"] += 1
        (run / "config.json").write_text(json.dumps(config))
    else:
        (run / "model.pt").write_bytes(bad_checkpoints(run, runs["double_hist"])[kind])
    (run / "program.json").write_bytes(b"[truncated")
    for args in (["decompile", str(run)], ["eval", str(run)], ["run", str(run), "<s>", "1"]):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert ("model.pt" in result.stderr) or ("program.json" in result.stderr)


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir.os, "fsync", disk_full)
    with pytest.raises(RunDirError, match="No space left on device"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left
    with pytest.raises(RunDirError, match="cannot write"):
        write_atomic(target / "inside-a-file.json", "x")


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real_loss, calls = training.sequence_loss, {"n": 0}

    def loss_that_turns_nan(logits, targets):
        calls["n"] += 1
        loss = real_loss(logits, targets)
        return loss * math.nan if calls["n"] > 2 else loss  # 1 step per epoch below

    monkeypatch.setattr(training, "sequence_loss", loss_that_turns_nan)
    config = task_config(
        "hist", {**TINY, "train.epochs": 5, "train.checkpoint_every": 1, "train.batch_size": 512}
    )
    with pytest.raises(TrainingDiverged, match="epoch 3"):
        train(config, tmp_path / "run", progress=False)
    kept = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert kept["epoch"] == 2


def _rewrite_checkpoint_config(run: Path, edit) -> None:
    blob = torch.load(run / CHECKPOINT, weights_only=True)
    config = json.loads(blob["config"])
    edit(config)
    blob["config"] = json.dumps(config)
    torch.save(blob, run / CHECKPOINT)


def test_a_checkpoint_from_before_a_config_key_existed_still_resumes(run_copy: Path) -> None:
    def forget_pruning(config: dict) -> None:  # as tprog wrote configs before train.prune*
        for key in [key for key in config["train"] if key.startswith("prune")]:
            del config["train"][key]

    _rewrite_checkpoint_config(run_copy, forget_pruning)
    config = json.loads((run_copy / "config.json").read_text())
    forget_pruning(config)
    (run_copy / "config.json").write_text(json.dumps(config))
    outcome = resume_and_decompile(run_copy, progress=False)
    assert outcome.results["agreement"]["code"] == 1.0


def test_a_checkpoint_of_another_configuration_is_refused(run_copy: Path) -> None:
    _rewrite_checkpoint_config(run_copy, lambda config: config["train"].update(lr=0.5))
    with pytest.raises(RunDirError, match="written for another configuration"):
        resume_and_decompile(run_copy, progress=False)
