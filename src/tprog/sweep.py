"""``tprog sweep``: run a sweep file's grid of runs in parallel, resumably, and report them.

Each run lives in ``<out>/runs/<task>/<grid point>-s<seed>``. A finished run is never redone
(its row is read back from its folder), a run with a checkpoint continues from it, and anything
else starts afresh; so an interrupted sweep resumes by running the same command again. After
every finished run, ``sweep.csv`` and ``summary.md`` are rewritten atomically.

Runs go to worker processes on this machine (``backend="local"``) or to Ray tasks
(``backend="ray"``, `tprog.sweep_ray`); both execute `tprog.sweep_worker.execute_run`, so they
write the same files and rows.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tprog.errors import ConfigError
from tprog.sweep_plan import PlannedRun, SweepPlan, load_sweep_file, plan_runs
from tprog.sweep_report import SUMMARY_MD, SWEEP_CSV, write_reports
from tprog.sweep_worker import (
    OnOutcome,
    RunJob,
    RunOutcome,
    RunState,
    cpu_count,
    end_with,
    execute_run,
    hold_lock,
    read_outcome,
    run_state,
)

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
SWEEP_LOCK = ".sweep.lock"


@dataclass(frozen=True)
class SweepResult:
    out: Path
    n_runs: int
    n_trained: int  # runs executed by this call (the others were already done)
    n_failed: int

    @property
    def csv_path(self) -> Path:
        return self.out / SWEEP_CSV

    @property
    def summary_path(self) -> Path:
        return self.out / SUMMARY_MD


def default_workers() -> int:
    """One run per CPU. A training step is hundreds of small tensor operations that two threads
    barely share: on 2 cores, two single-threaded sort runs train 9.6k examples/s between them,
    one run with both threads 7.4k."""
    return cpu_count()


def plan_sweep(sweep_file: Path, out: Path | None = None) -> tuple[SweepPlan, Path]:
    """The plan of a sweep file and its output folder (default ``sweeps/<name>``)."""
    plan = plan_runs(load_sweep_file(Path(sweep_file)), Path(sweep_file))
    return plan, Path(out) if out is not None else Path("sweeps") / plan.name


def describe_sweep(sweep_file: Path, out: Path | None = None) -> list[str]:
    """For ``--dry-run``: one line per run saying whether it is done, resumes or starts."""
    plan, out = plan_sweep(sweep_file, out)
    states = [run_state(out / run.run_dir, run.config) for run in plan.runs]
    counts = {state: states.count(state) for state in RunState}
    header = (
        f"{plan.name}: {len(plan.runs)} runs in {out} ({counts[RunState.DONE]} done, "
        f"{counts[RunState.RESUME]} to resume, {counts[RunState.START]} to start)"
    )
    return [
        header,
        *(f"{state:<6} {run.name}" for state, run in zip(states, plan.runs, strict=True)),
    ]


def run_sweep(
    sweep_file: Path,
    *,
    out: Path | None = None,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
) -> SweepResult:
    """Run every run of ``sweep_file`` that is not finished; returns what happened.

    ``workers`` runs go at once (each with ``CPUs // workers`` torch threads); with Ray, each
    run asks for that many CPUs and the cluster runs as many as fit. ``address`` is a Ray
    cluster's (Ray's own default without it: ``RAY_ADDRESS``, else a local instance).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if address is not None and backend != "ray":
        raise ConfigError("an address is for the Ray backend; add --backend ray.")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1 (got {workers}).")
    plan, out = plan_sweep(sweep_file, out)
    workers = workers or default_workers()
    with hold_lock(out / SWEEP_LOCK, f"another sweep is writing to {out}; wait for it to end"):
        return _run_plan(plan, out.resolve(), workers, backend, address)


def _run_plan(
    plan: SweepPlan, out: Path, workers: int, backend: str, address: str | None
) -> SweepResult:
    states = [run_state(out / run.run_dir, run.config) for run in plan.runs]
    outcomes = {
        index: outcome
        for index, (run, state) in enumerate(zip(plan.runs, states, strict=True))
        if state is RunState.DONE and (outcome := read_outcome(out / run.run_dir)) is not None
    }
    pending = [index for index in range(len(plan.runs)) if index not in outcomes]
    threads = max(1, cpu_count() // max(1, min(workers, len(pending))))
    jobs = [(i, _job(out, plan.runs[i], states[i], threads)) for i in pending]
    write_reports(out, plan, outcomes)
    _log_start(plan, len(outcomes), [job for _, job in jobs], workers)

    def on_outcome(index: int, outcome: RunOutcome) -> None:
        outcomes[index] = outcome
        write_reports(out, plan, outcomes)
        _log_outcome(len(outcomes), len(plan.runs), plan.runs[index], outcome)

    if jobs and backend == "local":
        run_locally(jobs, workers, on_outcome)
    elif jobs:
        from tprog.sweep_ray import run_on_ray  # Ray is optional: imported only when asked for

        run_on_ray(jobs, address, on_outcome)
    failed = sum(not outcome.ok for outcome in outcomes.values())
    return SweepResult(out, len(plan.runs), len(jobs), failed)


def _job(out: Path, run: PlannedRun, state: RunState, threads: int) -> RunJob:
    return RunJob(out / run.run_dir, run.config, state is RunState.RESUME, threads)


def _log_start(plan: SweepPlan, n_done: int, jobs: Sequence[RunJob], workers: int) -> None:
    if not jobs:
        logger.info("%s: all %d runs already done", plan.name, len(plan.runs))
        return
    resumed = sum(job.resume for job in jobs)
    logger.info(
        "%s: %d runs, %d already done; running %d (%d from a checkpoint), "
        "%d at a time with %d torch threads each",
        plan.name, len(plan.runs), n_done, len(jobs), resumed, workers, jobs[0].threads,
    )  # fmt: skip


def _log_outcome(done: int, total: int, run: PlannedRun, outcome: RunOutcome) -> None:
    seconds = f" in {outcome.seconds:.1f} s" if outcome.seconds is not None else ""
    if outcome.ok and outcome.test_accuracy is not None and outcome.val_accuracy is not None:
        accuracy = (
            f"test {100 * outcome.test_accuracy:.2f}% (val {100 * outcome.val_accuracy:.2f}%)"
        )
        logger.info("[%d/%d] %s: %s%s", done, total, run.name, accuracy, seconds)
    else:
        logger.warning("[%d/%d] %s: %s%s", done, total, run.name, outcome.status, seconds)


def run_locally(jobs: Sequence[tuple[int, RunJob]], workers: int, on_outcome: OnOutcome) -> None:
    """Worker processes on this machine ("spawn": nothing inherited from this process)."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=context,
        initializer=end_with,
        initargs=(os.getpid(),),
    )
    try:
        futures = {pool.submit(execute_run, job): index for index, job in jobs}
        for future in as_completed(futures):
            on_outcome(futures[future], _result(future))
    finally:  # on an interrupt, runs not yet started are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Future) -> RunOutcome:
    try:
        return future.result()
    except Exception as exc:  # the worker process died (killed, out of memory)
        return RunOutcome(f"failed: worker process died ({type(exc).__name__}: {exc})")
