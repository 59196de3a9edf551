"""Module removals after the classifier's refit: heads and MLPs dropped one at a time, each kept
only if the program, its classifier refit where needed, leaves no more inputs of the domain
wrong.

Training leaves every module used a little, and pruning (`tprog.prune`) can only judge a
removal by what fine-tuning the relaxation then achieves, which at the end of a refined run
mostly breaks what refinement mended. On a finite domain there is a sharper test: remove the
module, hold every other head and MLP as it is, and ask the classifier's linear program
(`tprog.readout`) whether some classifier is still right on every input. Reverse at its Table 1
configuration, refit and edited to be right on all 19,530 inputs, loses four modules this way
and stays right: 113 code lines become 99 (`results/programs/reverse-s2-removals/`).

A module is removed as pruning removes it (`prune.hold_removed`): every read that could pick its
variable is forbidden, so a head or MLP that read it reads its next choice instead, and its
classifier weights are 0; simplification then drops it from the program. Each of up to
``train.refit_removals`` steps:

1. takes the *live* modules: those whose variable the classifier weighs, or a live module reads
   (the others are dead already, and simplification drops them without help);
2. scores each one's removal on the whole domain by (conflicts, rows the current classifier puts
   short of its margin), as `tprog.repair` scores edits, and drops those with more conflicts than
   the model has now: no classifier gets a conflict's positions all right;
3. tries the best ``train.refit_candidates`` in that order: a removal is kept at once if the
   current classifier, without the module's weights, leaves no more inputs wrong; otherwise
   after a refit, if that one does. A step that keeps nothing ends the search.

``removal.json`` records every removal tried and those kept; the new model replaces model.pt if
any was kept, and the modules stay removed in runs continued from this one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tprog import ir
from tprog.data import Dataset
from tprog.extract import model_to_ir
from tprog.model.program import TransformerProgram
from tprog.prune import removed_copy
from tprog.readout import Refitter
from tprog.rundir import (
    REMOVAL,
    Run,
    finish_stage,
    read_json_if_present,
)


def remove_modules(run: Run, dataset: Dataset, *, progress: bool = True) -> dict[str, Any] | None:
    """Search removals for the model in ``run.path`` (see the module docstring) and rewrite
    model.pt if any is kept; returns the record removal.json keeps (None when
    train.refit_removals is 0)."""
    cfg = run.config.train
    if not cfg.refit_removals:
        return None
    finished = read_json_if_present(run.path / REMOVAL)
    if finished is not None:  # finished before the run was resumed: model.pt holds its outcome
        return finished
    started = time.perf_counter()
    model = run.load_model()
    refitter = Refitter(run, dataset, model)
    wrong = len(refitter.domain.check(model).wrong)
    record: dict[str, Any] = {"wrong_before": wrong, "removed": [], "tried": []}
    # a step scores every live module and may refit several times: minutes each
    bar = tqdm(desc=f"{run.config.task}: removals", unit="try", disable=not progress, leave=False)
    for step in range(1, cfg.refit_removals + 1):
        kept = None
        for name, conflicts, short in _rank(run, refitter, model)[: cfg.refit_candidates]:
            trial = refitter.without(model, [*refitter.removed, name])
            held = removed_copy(model, trial.removed)
            n_wrong, refit = len(trial.domain.check(held).wrong), False
            if n_wrong > wrong:
                held, _ = trial.refit(held, trial.problem(held))
                n_wrong, refit = len(trial.domain.check(held).wrong), True
            bar.update()
            record["tried"].append(
                {
                    "step": step,
                    "module": name,
                    "conflicts": conflicts,
                    "short": short,
                    "refit": refit,
                    "wrong": n_wrong,
                }
            )
            if n_wrong <= wrong:
                kept = (name, n_wrong, held, trial)
                break
        if kept is None:
            break
        name, wrong, model, refitter = kept
        record["removed"].append(name)
        bar.set_postfix(removed=len(record["removed"]), wrong=wrong)
    bar.close()
    record["wrong_after"] = wrong
    return finish_stage(run, REMOVAL, record, model if record["removed"] else None, started)


def removal_summary(run_dir: Path) -> dict[str, Any] | None:
    """What results.json says of the removals (None without them)."""
    return read_json_if_present(Path(run_dir) / REMOVAL)


def live_modules(program: ir.Program, removed: list[str]) -> list[str]:
    """The modules of ``program``, in order, whose variable the classifier weighs or a live
    module reads; ``removed`` ones are never live."""
    classifier = program.classifier
    live = {name for name, rows in classifier.categorical.items() if any(map(any, rows))}
    live |= {name for name, row in classifier.numerical.items() if any(row)}
    for module in reversed(program.modules):  # a module reads only those before it
        if module.name in live and module.name not in removed:
            live.update(ir.reads(module))
    return [module.name for module in program.modules if module.name in live - set(removed)]


def _rank(run: Run, refitter: Refitter, model: TransformerProgram) -> list[tuple[str, int, int]]:
    """The live modules as ``(name, conflicts, short)``, best first by (conflicts, rows the
    current classifier puts short) with each removed, those that add conflicts left out."""
    conflicts_now = len(refitter.problem(model).conflicts)
    program = model_to_ir(
        model, task=run.config.task, vocab=run.vocab.tokens, labels=run.labels.tokens
    )
    scored = []
    for name in live_modules(program, refitter.removed):
        trial = refitter.without(model, [*refitter.removed, name])
        held = removed_copy(model, trial.removed)
        problem = trial.problem(held)
        if len(problem.conflicts) <= conflicts_now:
            short = int(trial.short(held, problem).sum())
            scored.append((len(problem.conflicts), short, name))
    return [(name, conflicts, short) for conflicts, short, name in sorted(scored)]
