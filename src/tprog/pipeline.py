"""The library functions behind the CLI: train (+refine) + decompile, decompile, evaluate, run,
verify."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tprog.checkpoint import CHECKPOINT
from tprog.codegen import load_program_module
from tprog.codegen_template import RUNTIME_FILE
from tprog.config import RunConfig, with_post_training, without_post_training
from tprog.data import Dataset, build_dataset
from tprog.decompile import PROGRAM_UNSIMPLIFIED_JSON, Outcome, decompile
from tprog.errors import FaithfulnessError, InputError, RunDirError, TprogError
from tprog.faithful import rows_agree
from tprog.interpret import predict_ids, run_program
from tprog.ir import Program
from tprog.prune import PRUNING, prune, pruning_summary, removed_modules
from tprog.readout import READOUT, readout_summary, refit_readout
from tprog.refine import INHERITED, REFINEMENT, inheritance, refine, refinement_summary
from tprog.removal import removal_summary, remove_modules
from tprog.repair import REPAIR, repair_predicates, repair_summary
from tprog.rundir import (
    CONFIG,
    LINEAGE,
    METRICS,
    PROGRAM_JSON,
    REMOVAL,
    RUN,
    TIMING,
    VOCAB,
    Run,
    load_config,
    load_run,
    load_torch_file,
    read_lineage,
    require_program_run,
    save_torch_file,
    write_atomic,
    write_json,
    write_log,
)
from tprog.train import hard_predictions, resolve, split_accuracy, train
from tprog.train_standard import train_standard
from tprog.verify import (
    DEFAULT_MAX_INPUTS,
    DEFAULT_SAMPLE,
    VERIFY_JSON,
    VerifyReport,
    verify_for_run,
)


def train_and_decompile(
    config: RunConfig, out_dir: Path, *, overwrite: bool = False, progress: bool = True
) -> Outcome:
    """Validate ``config`` and build its data, then (only then) claim ``out_dir``, train,
    decompile and check faithfulness (a standard-Transformer baseline, ``model.kind=standard``,
    is trained and evaluated only). An existing run directory is replaced only with
    ``overwrite``."""
    config, dataset = resolve(config)
    prepare_run_dir(Path(out_dir), overwrite)
    if config.model.kind == "standard":  # the baseline: trained and evaluated, no program
        return train_standard(config, Path(out_dir), progress=progress, dataset=dataset)
    run = train(config, out_dir, progress=progress, dataset=dataset)
    return _after_training(run, dataset, progress)


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
    if config.model.kind == "standard":
        return train_standard(
            config, Path(run_dir), progress=progress, dataset=dataset, resume=True
        )
    run = train(config, Path(run_dir), progress=progress, dataset=dataset, resume=True)
    return _after_training(run, dataset, progress)


def _after_training(run: Run, dataset: Dataset, progress: bool) -> Outcome:
    """The stages after training (each a no-op unless configured), then decompiling."""
    prune(run, dataset, progress=progress)
    refine(run, dataset, progress=progress)
    refit_readout(run, dataset)
    repair_predicates(run, dataset)
    remove_modules(run, dataset, progress=progress)
    return decompile(run, dataset=dataset, model=run.load_model())


# a stage ran if its log exists
STAGE_LOGS = {
    "pruning": PRUNING,
    "refinement": REFINEMENT,
    "readout": READOUT,
    "repair": REPAIR,
    "removal": REMOVAL,
}


def continue_run(
    source: Path,
    out: Path,
    overrides: Mapping[str, Any],
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Outcome:
    """A new run in ``out`` that starts from the model of the run in ``source`` and runs the
    stages after training as ``overrides`` set them (train.prune*, train.refine*,
    train.refit_*), then decompiles it. ``source`` is left as it is.

    From a run that only trained, the new run's training is ``source``'s: config, vocabulary,
    logs and end-of-training checkpoint are copied, so the new run is the run that the new
    config would have made from scratch. From a run that was pruned or refined (and finished),
    it starts from the model of ``source``'s program instead, with the stages set only by
    ``overrides``: refine, then prune, then refine again is a chain of continued runs. What the
    model went through before is recorded in continued_from.json (``source``'s config and
    stage results, and its own record if it too was continued), the modules ``source`` had
    removed stay removed, and the counterexamples of every refinement in the chain are the
    new run's to start from (`tprog.refine`, ``train.refine_inherit``).
    """
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise RunDirError(f"--out is {source} itself; continue into a new run directory.")
    config = load_config(source)
    require_program_run(config, source)
    blob = load_torch_file(source / CHECKPOINT, "epoch")
    stages = [stage for stage, log in STAGE_LOGS.items() if (source / log).exists()]
    if stages:
        lineage, weights = _lineage(source, config, stages)
        config = without_post_training(config)
        blob = {**blob, "epoch": config.train.epochs, "model": weights}
    elif blob["epoch"] != config.train.epochs:
        raise RunDirError(
            f"{source} has no end-of-training checkpoint to continue from (its checkpoint is "
            f"from epoch {blob['epoch']}); resume it first (tprog train --resume)."
        )
    new_config = with_post_training(config, overrides)
    new_config, dataset = resolve(new_config)
    inherited = inheritance(source)  # the counterexamples of the chain so far
    prepare_run_dir(out, overwrite)
    for name in (RUN, VOCAB, METRICS, TIMING):
        shutil.copyfile(source / name, out / name)
    if stages:
        write_json(out / LINEAGE, lineage)
    elif (source / LINEAGE).is_file():  # source continued one and added no stage of its own
        shutil.copyfile(source / LINEAGE, out / LINEAGE)
    if inherited:
        write_log(out / INHERITED, inherited)
    write_atomic(out / CONFIG, new_config.to_json())
    save_torch_file(out / CHECKPOINT, {**blob, "config": new_config.to_json()})
    run = train(new_config, out, progress=progress, dataset=dataset, resume=True)
    return _after_training(run, dataset, progress)


def _lineage(
    source: Path, config: RunConfig, stages: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a run continued from ``source`` records of it, and the weights of ``source``'s
    program. ``source`` must have finished its ``stages``: its program is written only after
    them."""
    if not (source / PROGRAM_JSON).is_file():
        raise RunDirError(
            f"{source} has not finished its {' and '.join(stages)}; resume it first "
            "(tprog train --resume), then continue from it."
        )
    run = load_run(source)
    model = run.load_model()
    pruning, refinement = pruning_summary(source), refinement_summary(source)
    if pruning is not None:  # every attempt's record stays in source's pruning.jsonl
        pruning = {key: value for key, value in pruning.items() if key != "attempts"}
    if refinement is not None:
        refinement = {
            "wrong_after_each_round": [record["n_wrong"] for record in refinement["rounds"]],
            "kept_round": refinement["kept_round"],
        }
    record = {
        "run": str(source.resolve()),
        "config": json.loads(config.to_json()),
        "removed": removed_modules(source, model),
        "pruning": pruning,
        "refinement": refinement,
        "readout": _picked(
            readout_summary(source), ("wrong_before", "wrong_after", "kept", "n_conflicts")
        ),
        "repair": _picked(repair_summary(source), ("wrong_before", "wrong_after", "edits")),
        "removal": _picked(removal_summary(source), ("wrong_before", "wrong_after", "removed")),
        "continued_from": read_lineage(source),
    }
    return record, model.state_dict()


def decompile_dir(path: Path) -> Outcome:
    return decompile(load_run(path))


def evaluate_dir(path: Path, split_name: str = "test") -> dict[str, float]:
    """Accuracy of the hard model and of its program (program.json) on one split."""
    run = load_run(path)
    split = getattr(build_dataset(run.task, run.config), split_name)
    model_pred = hard_predictions(run.load_model(), split)
    program_pred = predict_ids(load_program(path), split.ids, split.lengths)
    return {
        "split": split_name,
        "examples": len(split),
        "model_accuracy": split_accuracy(model_pred, split),
        "program_accuracy": split_accuracy(program_pred, split),
        "agreement": float(rows_agree(program_pred, model_pred, split.lengths).mean()),
    }


def load_program(run_dir: Path, name: str = PROGRAM_JSON) -> Program:
    path = Path(run_dir) / name
    if not path.is_file():
        _refuse_standard_run(Path(run_dir))
        raise RunDirError(f"{path} is missing: run `tprog decompile {run_dir}` first.")
    try:
        return Program.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path} is not a valid tprog program ({exc}).") from None


def _refuse_standard_run(run_dir: Path) -> None:
    """A standard-Transformer run has no program.json: say so, rather than suggest decompiling."""
    try:
        config = load_config(run_dir)
    except TprogError:
        return  # not a readable run directory: the missing program is the error to report
    require_program_run(config, run_dir)


def run_tokens(target: Path, tokens: Sequence[str]) -> list[str]:
    """Run a run directory's program (IR) or a generated ``program.py`` on one input."""
    target = Path(target)
    if target.suffix == ".py":
        if not target.is_file():
            raise RunDirError(f"program file {str(target)!r} does not exist.")
        try:
            module = load_program_module(target)
        except FileNotFoundError as exc:  # a program.py copied without the files beside it
            raise RunDirError(
                f"program file {str(target)!r} needs {Path(exc.filename).name!r} beside it: "
                f"copy it with its weights file and {RUNTIME_FILE}, from its run directory."
            ) from None
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
    # A program simplified on part of its domain may differ elsewhere (its docstring says so);
    # one simplified on the whole domain (the default, and old files) may not.
    exact = program.meta.get("simplified_on_whole_domain", True)
    for check in report.references if exact else ():
        if check.first_disagreement is not None:
            case = check.first_disagreement
            raise FaithfulnessError(
                f"{PROGRAM_JSON} differs from {check.name} on {' '.join(case.input)!r}: "
                f"{' '.join(case.program)!r} vs {' '.join(case.reference)!r} "
                f"(equal on {check.agreement:.6f} of the inputs; see {VERIFY_JSON})."
            )
    return report


def _picked(summary: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """What a continued run's lineage keeps of a stage's record: ``keys`` (None without one)."""
    return None if summary is None else {key: summary[key] for key in keys}
