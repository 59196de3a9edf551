"""The library functions behind the CLI: train+decompile, decompile, evaluate, run, verify."""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tprog import __version__
from tprog.codegen import load_program_module, write_program
from tprog.config import RunConfig
from tprog.data import Dataset, Split, build_dataset
from tprog.errors import FaithfulnessError, InputError, RunDirError
from tprog.extract import model_to_ir
from tprog.faithful import check_agreement, rows_agree
from tprog.interpret import predict_ids, run_program
from tprog.ir import Program
from tprog.model.program import TransformerProgram
from tprog.rundir import (
    PROGRAM_JSON,
    PROGRAM_PY,
    RESULTS,
    Run,
    load_config,
    load_run,
    write_atomic,
    write_json,
)
from tprog.train import accuracy, predict, resolve, train
from tprog.verify import (
    DEFAULT_MAX_INPUTS,
    DEFAULT_SAMPLE,
    VERIFY_JSON,
    VerifyReport,
    verify_for_run,
)

SPLITS = ("train", "val", "test")
# The program before simplification, when a run has one: verify checks the two agree.
PROGRAM_UNSIMPLIFIED_JSON = "program_unsimplified.json"


@dataclass(frozen=True)
class Outcome:
    run_dir: Path
    results: dict[str, Any]

    @property
    def program_path(self) -> Path:
        return self.run_dir / PROGRAM_PY


def train_and_decompile(
    config: RunConfig, out_dir: Path, *, overwrite: bool = False, progress: bool = True
) -> Outcome:
    """Validate ``config`` and build its data, then (only then) claim ``out_dir``, train,
    decompile and check faithfulness. An existing run directory is replaced only with
    ``overwrite``."""
    config, dataset = resolve(config)
    prepare_run_dir(Path(out_dir), overwrite)
    run = train(config, out_dir, progress=progress, dataset=dataset)
    return decompile(run, dataset=dataset, model=run.load_model())


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """An empty directory for a new run: refuse to reuse an occupied one unless ``overwrite``."""
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not overwrite:
        raise RunDirError(f"{out} already exists; choose another --out or pass --overwrite.")
    try:
        if occupied and out.is_dir():
            shutil.rmtree(out)
        elif occupied:
            out.unlink()
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {out}: {exc.strerror}.") from None


def resume_and_decompile(
    run_dir: Path, *, task: str | None = None, progress: bool = True
) -> Outcome:
    """Continue an interrupted run from its last checkpoint, then decompile it.

    ``task``, when given, must be the run's task (a guard against resuming the wrong run).
    """
    config = load_config(run_dir)
    if task is not None and task != config.task:
        raise RunDirError(f"{run_dir} is a run of task {config.task!r}, not {task!r}.")
    config, dataset = resolve(config)
    run = train(config, Path(run_dir), progress=progress, dataset=dataset, resume=True)
    return decompile(run, dataset=dataset, model=run.load_model())


def _header(run: Run, accuracies: dict[str, float]) -> str:
    return "\n".join(
        [
            f"Learned by tprog {__version__} (seed {run.config.seed}; config in config.json).",
            "Hard-model token accuracy: "
            + ", ".join(f"{split} {accuracies[split]:.4f}" for split in SPLITS)
            + ".",
            "Checked equal to the hard model on every train/val/test example.",
        ]
    )


def decompile(
    run: Run, *, dataset: Dataset | None = None, model: TransformerProgram | None = None
) -> Outcome:
    """Extract the program, write program.json/program.py, check faithfulness, write results.

    Raises `FaithfulnessError` (after writing results.json) if any example disagrees.
    """
    model = model if model is not None else run.load_model()
    dataset = dataset if dataset is not None else build_dataset(run.task, run.config)
    # One hard-model pass per split serves both the accuracies and the faithfulness check.
    predictions = {name: _hard_predictions(model, getattr(dataset, name)) for name in SPLITS}
    accuracies = {name: _accuracy(predictions[name], getattr(dataset, name)) for name in SPLITS}
    program = model_to_ir(
        model,
        task=run.config.task,
        vocab=run.vocab.tokens,
        labels=run.labels.tokens,
        meta={"config": json.loads(run.config.to_json()), "tprog_version": __version__},
    )
    write_atomic(run.path / PROGRAM_JSON, program.to_json())
    write_program(program, run.path / PROGRAM_PY, header=_header(run, accuracies))
    module = load_program_module(run.path / PROGRAM_PY)
    agreement = check_agreement(predictions, program, module, dataset)
    results = {
        **{f"{name}_accuracy": accuracies[name] for name in SPLITS},
        "program_test_accuracy": _accuracy(agreement.ir_predictions["test"], dataset.test),
        "agreement": {"ir": agreement.ir, "code": agreement.code},
        "n_examples_checked": agreement.n_examples,
        "machine": platform.machine(),
    }
    write_json(run.path / RESULTS, results)
    if agreement.first is not None:
        raise FaithfulnessError(
            f"the program is not faithful (agreement ir={agreement.ir:.6f}, "
            f"code={agreement.code:.6f}): {agreement.first.describe()}"
        )
    return Outcome(run.path, results)


def decompile_dir(path: Path) -> Outcome:
    return decompile(load_run(path))


def _hard_predictions(model: TransformerProgram, split: Split) -> np.ndarray:
    return predict(model, torch.as_tensor(split.ids), torch.as_tensor(split.lengths)).numpy()


def _accuracy(predicted: np.ndarray, split: Split) -> float:
    return accuracy(torch.as_tensor(predicted), torch.as_tensor(split.target_ids))


def evaluate_dir(path: Path, split_name: str = "test") -> dict[str, float]:
    """Accuracy of the hard model and of its program (program.json) on one split."""
    run = load_run(path)
    split = getattr(build_dataset(run.task, run.config), split_name)
    model_pred = _hard_predictions(run.load_model(), split)
    program_pred = predict_ids(load_program(path), split.ids, split.lengths)
    return {
        "split": split_name,
        "examples": len(split),
        "model_accuracy": _accuracy(model_pred, split),
        "program_accuracy": _accuracy(program_pred, split),
        "agreement": float(rows_agree(program_pred, model_pred, split.lengths).mean()),
    }


def load_program(run_dir: Path, name: str = PROGRAM_JSON) -> Program:
    path = Path(run_dir) / name
    if not path.is_file():
        raise RunDirError(f"{path} is missing: run `tprog decompile {run_dir}` first.")
    try:
        return Program.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path} is not a valid tprog program ({exc}).") from None


def run_tokens(target: Path, tokens: Sequence[str]) -> list[str]:
    """Run a run directory's program (IR) or a generated ``program.py`` on one input."""
    target = Path(target)
    if target.suffix == ".py":
        if not target.is_file():
            raise RunDirError(f"program file {str(target)!r} does not exist.")
        module = load_program_module(target)
        try:
            return list(module.run(list(tokens)))
        except ValueError as exc:  # generated programs reject bad input with ValueError
            raise InputError(str(exc)) from None
    if not target.is_dir():
        raise RunDirError(f"run directory {str(target)!r} does not exist.")
    return run_program(load_program(target), [list(tokens)])[0]


def verify_dir(
    run_dir: Path,
    *,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
) -> VerifyReport:
    """Check a run's program.json against its task's targets on the whole input domain (or a
    sample, see `tprog.verify`) and write verify.json.

    A program_unsimplified.json, when present, must give the same output on every checked
    input: simplification may not change behaviour, so a difference raises `FaithfulnessError`
    (after verify.json is written, for the details).
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    program = load_program(run_dir)
    references = []
    if (run_dir / PROGRAM_UNSIMPLIFIED_JSON).is_file():
        unsimplified = load_program(run_dir, PROGRAM_UNSIMPLIFIED_JSON)
        references.append((PROGRAM_UNSIMPLIFIED_JSON, unsimplified))
    report = verify_for_run(
        program,
        config,
        max_inputs=max_inputs,
        sample=sample,
        seed=seed,
        reference_programs=references,
    )
    write_json(run_dir / VERIFY_JSON, report.to_dict())
    for check in report.references:
        if check.first_disagreement is not None:
            case = check.first_disagreement
            raise FaithfulnessError(
                f"{PROGRAM_JSON} differs from {check.name} on {' '.join(case.input)!r}: "
                f"{' '.join(case.program)!r} vs {' '.join(case.reference)!r} "
                f"(equal on {check.agreement:.6f} of the inputs; see {VERIFY_JSON})."
            )
    return report
