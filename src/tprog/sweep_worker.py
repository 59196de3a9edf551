"""One run of a sweep: what state its folder is in, running it, and reading back how it went.

`execute_run` is what a worker process (or a Ray task) executes. It records the run's outcome
in the run folder (``sweep_run.json``: status and seconds), so that a rerun of the sweep reads a
finished run back from its files instead of training it again, and reports the same seconds.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from tprog.checkpoint import CHECKPOINT
from tprog.config import RunConfig
from tprog.errors import ConfigError, RunDirError, TprogError
from tprog.pipeline import resume_and_decompile, train_and_decompile
from tprog.rundir import CONFIG, RESULTS, load_config, write_json
from tprog.sweep_plan import flat_config

SWEEP_RECORD = "sweep_run.json"  # {"status": "ok" | "failed: ...", "seconds": float}
ACCURACIES = ("train_accuracy", "val_accuracy", "test_accuracy")
SIZES = ("simplified", "unsimplified")  # results.json's size figures, after and before


class RunState(StrEnum):
    DONE = "done"  # results and record present: never redone
    RESUME = "resume"  # a checkpoint and no results: continue from the checkpoint
    START = "start"  # nothing usable: (re)start from scratch


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs; plain data, so it pickles for processes and Ray alike."""

    run_dir: Path  # absolute
    config: RunConfig
    resume: bool
    threads: int  # torch threads in the worker


@dataclass(frozen=True)
class ProgramFigures:
    """How long a run's program is and how right, from its results.json."""

    code_lines: int  # of program.py, the simplified program
    code_lines_unsimplified: int
    modules: int  # live heads and MLPs after simplification
    modules_unsimplified: int
    verified_on: str  # "whole domain", "uniform sample of N" or "generator sample of N"
    verified_inputs: int
    wrong_inputs: int  # inputs with at least one wrong label
    verified_accuracy: float  # token accuracy on those inputs
    simplified_agreement: float  # simplified vs unsimplified program on those inputs
    learned_lines: int | None = None  # program() and co. only (None: decompiled before)


@dataclass(frozen=True)
class RunOutcome:
    status: str  # "ok" or "failed: <message>"
    seconds: float | None = None
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    agreement: float | None = None  # the lowest of results.json's agreement figures, if any
    program: ProgramFigures | None = None  # None for a baseline, or results without them

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# How a backend reports each finished run: its index in the plan, and its outcome.
OnOutcome = Callable[[int, RunOutcome], None]


def run_state(run_dir: Path, planned: RunConfig) -> RunState:
    """Where a run folder stands. A finished run of another configuration than the sweep now
    asks for is refused (it would otherwise be reported under the wrong config); a partial one
    starts afresh."""
    if not (run_dir / CONFIG).is_file():
        return RunState.START
    difference = config_difference(run_dir, planned)
    if read_outcome(run_dir) is not None:
        if difference is not None:
            raise ConfigError(
                f"{run_dir} holds a finished run of another configuration than the sweep file "
                f"now gives it ({difference}); choose another --out or remove that folder."
            )
        return RunState.DONE
    resumable = difference is None and (run_dir / CHECKPOINT).is_file()
    return RunState.RESUME if resumable else RunState.START


def config_difference(run_dir: Path, planned: RunConfig) -> str | None:
    """How the run folder's saved config differs from ``planned``; None if it does not.
    (``model.d_var``, resolved on saving, counts only where the plan sets it.)"""
    try:
        saved = flat_config(load_config(run_dir))
    except TprogError:
        return f"its {CONFIG} is unreadable"
    wanted = flat_config(planned)
    if wanted["model.d_var"] is None:
        saved["model.d_var"] = None
    for key, value in wanted.items():
        if saved.get(key) != value:
            return f"{key} is {saved.get(key)!r} there, {value!r} in the sweep"
    return None


def read_outcome(run_dir: Path) -> RunOutcome | None:
    """A finished run's outcome from its files; None unless both the record and complete
    results are there."""
    record, results = read_json(run_dir / SWEEP_RECORD), read_json(run_dir / RESULTS)
    if not _is_record(record) or not _is_results(results):
        return None
    return _outcome(record["status"], record["seconds"], results)


def _outcome(status: str, seconds: float | None, results: dict[str, Any] | None) -> RunOutcome:
    if results is None:
        return RunOutcome(status, seconds)
    agreement = results["agreement"]
    return RunOutcome(
        status,
        seconds,
        *(float(results[name]) for name in ACCURACIES),
        agreement=None if agreement is None else min(map(float, agreement.values())),
        program=program_figures(results),
    )


def program_figures(results: dict[str, Any]) -> ProgramFigures | None:
    """The program's size and verification from results.json; None where either is missing
    (a standard-Transformer baseline has no program) or malformed."""
    try:
        size, verification = results["size"], results["verification"]
        modules = {kind: sum(map(int, size["modules"][kind].values())) for kind in SIZES}
        return ProgramFigures(
            code_lines=int(size["code_lines"]["simplified"]),
            code_lines_unsimplified=int(size["code_lines"]["unsimplified"]),
            modules=modules["simplified"],
            modules_unsimplified=modules["unsimplified"],
            verified_on=str(verification["mode"]),
            verified_inputs=int(verification["n_inputs"]),
            wrong_inputs=int(verification["n_wrong"]),
            verified_accuracy=float(verification["token_accuracy"]),
            simplified_agreement=float(verification["simplified_vs_unsimplified"]),
            learned_lines=_optional_int(size["code_lines"].get("learned")),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("status"), str)
        and _is_number(record.get("seconds"))
    )


def _is_results(results: Any) -> bool:
    """results.json as written last by a finished run: the accuracies, and the agreement
    figures (None for a standard-Transformer baseline, which has no program)."""
    if not isinstance(results, dict) or not all(_is_number(results.get(n)) for n in ACCURACIES):
        return False
    agreement = results.get("agreement", False)
    if agreement is None:
        return True
    return (
        isinstance(agreement, dict) and bool(agreement) and all(map(_is_number, agreement.values()))
    )


def execute_run(job: RunJob) -> RunOutcome:
    """Train and decompile one run, then record its status and seconds in its folder.

    A failure of the run itself is its outcome ("failed: ..."), never an exception: the sweep
    goes on with the other runs.
    """
    torch.set_num_threads(job.threads)
    try:
        with _run_lock(job.run_dir):
            started = time.perf_counter()
            status, details = _train(job)
            record = {"status": status, "seconds": time.perf_counter() - started}
            write_json(job.run_dir / SWEEP_RECORD, record | details)
    except RunDirError as exc:  # the lock is held elsewhere, or the record cannot be written
        return RunOutcome(f"failed: {exc}")
    results = read_json(job.run_dir / RESULTS)
    return _outcome(record["status"], record["seconds"], results if _is_results(results) else None)


def _train(job: RunJob) -> tuple[str, dict[str, str]]:
    """Run the pipeline; returns the status and, for an unexpected error, its traceback."""
    try:
        if job.resume:
            resume_and_decompile(job.run_dir, task=job.config.task, progress=False)
        else:
            train_and_decompile(job.config, job.run_dir, overwrite=True, progress=False)
    except TprogError as exc:
        return f"failed: {_one_line(str(exc))}", {}
    except Exception as exc:  # a bug in one run must not end the sweep; keep its traceback
        return f"failed: {type(exc).__name__}: {_one_line(str(exc))}", {
            "traceback": traceback.format_exc()
        }
    return "ok", {}


def _one_line(message: str) -> str:
    return " ".join(message.split())


@contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the run folder (not inside it: a fresh start empties the
    folder), so that two processes never train into one folder, e.g. a rerun while a worker of
    a killed sweep is still finishing. The OS drops the lock when its process dies."""
    lock_path = run_dir.with_name(f".{run_dir.name}.lock")
    with hold_lock(lock_path, f"{run_dir} is being trained by another process"):
        yield


@contextmanager
def hold_lock(path: Path, busy: str) -> Iterator[None]:
    """An exclusive, non-blocking `flock` on ``path``; `RunDirError` with ``busy`` if taken."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as exc:
        raise RunDirError(f"cannot create {path}: {exc.strerror}.") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{busy}.") from None
        yield


# prctl(2) option: the signal the kernel sends this process when its parent ends.
_PR_SET_PDEATHSIG = 1


def end_with(parent: int) -> None:
    """Worker-process initializer: end when the sweep process ``parent`` ends, however it ends
    (Linux; elsewhere a no-op). Without it a sweep killed on its own leaves its workers training,
    each holding its run's lock, and the rerun could not resume those runs."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the sweep ended before prctl took effect
        os._exit(1)


def cpu_count() -> int:
    """CPUs this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
