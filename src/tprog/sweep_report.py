"""A sweep's reports: ``sweep.csv`` (one row per run) and ``summary.md`` (one row per
configuration, beside the paper's numbers where the configuration is the paper's).

Both are rebuilt from the plan and the outcomes known so far, in plan order (task, grid order,
seed), so they do not depend on which run happened to finish first.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from tprog.config import RunConfig
from tprog.rundir import write_atomic
from tprog.sweep_plan import PlannedRun, SweepPlan, flat_config
from tprog.sweep_worker import ProgramFigures, RunOutcome
from tprog.tasks.registry import task_config

SWEEP_CSV, SUMMARY_MD = "sweep.csv", "summary.md"
RESULT_COLUMNS = (
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "agreement",
    *(field.name for field in fields(ProgramFigures)),
    "seconds",
    "status",
)

# TASKS.md, token test accuracy in percent: (paper Table 1, public reproduction at the same
# configuration, paper Table 3 = the same L/H/M with only categorical heads and MLPs).
RASP_REFERENCES = {
    "reverse": (99.79, 99.89, 99.75),
    "hist": (100.0, 99.99, 83.20),
    "double_hist": (98.40, 99.67, 55.89),
    "sort": (99.83, 100.0, 99.99),
    "most_freq": (75.69, 82.39, 64.13),
    "dyck1": (99.30, 99.65, 99.43),
    "dyck2": (99.09, 99.22, 99.17),
}
INDUCTION_PAPER = 100.0  # paper §4.1: perfect test accuracy
# Keys that do not change what a run learns, so a configuration is "the paper's" whatever
# they are set to.
NOT_PROTOCOL = ("seed", "train.eval_every", "train.checkpoint_every", "train.device")


@dataclass(frozen=True)
class Reference:
    source: str  # which table of the paper
    paper: float
    reproduction: float | None = None


def write_reports(out: Path, plan: SweepPlan, outcomes: Mapping[int, RunOutcome]) -> None:
    """(Re)write sweep.csv and summary.md atomically, so a kill never leaves half a file."""
    write_atomic(out / SWEEP_CSV, csv_text(plan, outcomes))
    write_atomic(out / SUMMARY_MD, summary_text(plan, outcomes))


def csv_text(plan: SweepPlan, outcomes: Mapping[int, RunOutcome]) -> str:
    """One row per run with an outcome; accuracies as fractions, at full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", *plan.varying_keys, "seed", "run_dir", *RESULT_COLUMNS])
    for index, run in enumerate(plan.runs):
        if index in outcomes:
            writer.writerow(csv_row(plan, run, outcomes[index]))
    return buffer.getvalue()


def csv_row(plan: SweepPlan, run: PlannedRun, outcome: RunOutcome) -> list[str]:
    flat = flat_config(run.config)
    varying = [_cell(flat[key]) for key in plan.varying_keys]
    results = [
        _cell(outcome.train_accuracy),
        _cell(outcome.val_accuracy),
        _cell(outcome.test_accuracy),
        _cell(outcome.agreement),
        *(_cell(value) for value in _program_cells(outcome.program)),
        "" if outcome.seconds is None else f"{outcome.seconds:.2f}",
        outcome.status,
    ]
    return [run.task, *varying, str(run.seed), run.run_dir.as_posix(), *results]


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _program_cells(program: ProgramFigures | None) -> tuple[Any, ...]:
    return (None,) * len(fields(ProgramFigures)) if program is None else astuple(program)


def summary_text(plan: SweepPlan, outcomes: Mapping[int, RunOutcome]) -> str:
    finished = len(outcomes)
    failed = [(plan.runs[i], o) for i, o in sorted(outcomes.items()) if not o.ok]
    lines = [
        f"# Sweep `{plan.name}`",
        "",
        f"From `{plan.source}`: {finished} of {len(plan.runs)} runs finished, "
        f"{len(failed)} failed; one row per run in `{SWEEP_CSV}`.",
        "",
        "Token-level test accuracy in percent over the seeds that finished: *best* is the test "
        "accuracy of the seed with the best validation accuracy (ties: the lower seed), as the "
        "paper reports it; *agreement* is the lowest program-vs-model agreement. The paper's and "
        "the public reproduction's numbers (TASKS.md) stand beside a configuration only when it "
        "is exactly that table's protocol (architecture, data and training).",
        "",
        "| task | configuration | seeds | best | median | min–max | agreement "
        "| paper | reproduction | reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = _groups(plan, outcomes)
    for (task, slug), group in groups.items():
        lines.append(_summary_row(task, slug, group))
    lines += _programs_table(groups)
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- `{run.run_dir.as_posix()}`: {outcome.status}" for run, outcome in failed]
    return "\n".join(lines) + "\n"


Group = list[tuple[PlannedRun, RunOutcome | None]]  # one configuration's runs, by seed


def _groups(plan: SweepPlan, outcomes: Mapping[int, RunOutcome]) -> dict[tuple[str, str], Group]:
    """Runs by (task, grid point), in plan order."""
    groups: dict[tuple[str, str], Group] = {}
    for index, run in enumerate(plan.runs):
        groups.setdefault((run.task, run.point.slug), []).append((run, outcomes.get(index)))
    return groups


def _finished(group: Group) -> list[tuple[PlannedRun, RunOutcome]]:
    return [(run, o) for run, o in group if o is not None and o.ok and o.test_accuracy is not None]


def _best(group: Group) -> tuple[PlannedRun, RunOutcome] | None:
    """The finished run with the best validation accuracy (ties: the lower seed)."""
    done = _finished(group)
    return max(done, key=lambda item: (item[1].val_accuracy or 0.0, -item[0].seed), default=None)


def _summary_row(task: str, slug: str, group: Group) -> str:
    done = _finished(group)
    tests = [o.test_accuracy for _, o in done if o.test_accuracy is not None]
    cells = [task, slug, f"{len(done)}/{len(group)}"]
    if (best_run := _best(group)) is not None:
        best = best_run[1]
        agreements = [o.agreement for _, o in done if o.agreement is not None]
        cells += [
            _percent(best.test_accuracy),
            _percent(statistics.median(tests)),
            f"{_percent(min(tests))}–{_percent(max(tests))}",
            f"{min(agreements):.6f}" if agreements else "—",
        ]
    else:
        cells += ["—"] * 4
    reference = reference_for(group[0][0].config)
    if reference is None:
        cells += ["—"] * 3
    else:
        reproduction = reference.reproduction
        cells += [
            f"{reference.paper:.2f}",
            "—" if reproduction is None else f"{reproduction:.2f}",
            reference.source,
        ]
    return "| " + " | ".join(cells) + " |"


def _programs_table(groups: dict[tuple[str, str], Group]) -> list[str]:
    """Per configuration, the program of its best seed by validation: how long it reads
    before and after simplification, and how right it is on the inputs `tprog verify` ran
    (the whole domain where it is small enough, else a sample)."""
    rows = []
    for (task, slug), group in groups.items():
        best = _best(group)
        if best is None or best[1].program is None:
            continue
        run, program = best[0], best[1].program
        rows.append(
            f"| {task} | {slug} | {run.seed} "
            f"| {program.code_lines_unsimplified} → {program.code_lines} "
            f"| {'—' if program.learned_lines is None else program.learned_lines} "
            f"| {program.modules_unsimplified} → {program.modules} "
            f"| {_verified_on(program)} "
            f"| {_percent(program.verified_accuracy)} | {program.wrong_inputs:,} "
            f"| {program.simplified_agreement:.6f} |"
        )
    if not rows:
        return []
    return [
        "",
        "## Programs",
        "",
        "The program of each configuration's best seed: code lines of `program.py` (weights, "
        "comments and docstrings excluded, and the runtime it loads, the same for every "
        "program), before → after simplification; how many of them are the program's own "
        "(`program()`, its predicates and tables: the rest load the runtime); live heads "
        "and MLPs, before → after simplification; token accuracy and inputs with a wrong "
        "label on the inputs `tprog verify` ran; agreement of the simplified program with "
        "the unsimplified one there.",
        "",
        "| task | configuration | seed | code lines | its own | heads and MLPs | verified on "
        "| token accuracy | wrong inputs | simplified = unsimplified |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _verified_on(program: ProgramFigures) -> str:
    """The whole domain with its size; a sample, whose mode already says how many."""
    if program.verified_on == "whole domain":
        return f"whole domain ({program.verified_inputs:,} inputs)"
    return program.verified_on


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def reference_for(config: RunConfig) -> Reference | None:
    """The paper's number for ``config`` when it is exactly one of the paper's settings."""
    task, protocol = config.task, _protocol(config)
    if task in RASP_REFERENCES:
        table1, reproduction, table3 = RASP_REFERENCES[task]
        paper = task_config(task)
        if protocol == _protocol(paper):
            return Reference("Table 1", table1, reproduction)
        if protocol == _protocol(categorical_only(paper)):
            return Reference("Table 3 (categorical only)", table3)
    if task == "induction" and protocol == _protocol(task_config(task)):
        return Reference("§4.1", INDUCTION_PAPER)
    return None


def categorical_only(config: RunConfig) -> RunConfig:
    """The same layers, heads and MLPs per layer, every one of them categorical (Table 3)."""
    model = config.model
    update = {
        "n_heads_cat": model.n_heads_cat + model.n_heads_num,
        "n_heads_num": 0,
        "n_mlps_cat": model.n_mlps_cat + model.n_mlps_num,
        "n_mlps_num": 0,
    }
    return config.model_copy(update={"model": model.model_copy(update=update)})


def _protocol(config: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in flat_config(config).items() if k not in NOT_PROTOCOL}
