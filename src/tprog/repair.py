"""Predicate edits: after the classifier's refit, change single choices of the heads, each
followed by another refit, while inputs of the domain stay wrong.

The refit (`tprog.readout`) leaves wrong only what no classifier fixes: *conflicts*, positions
whose variables are all equal where their labels differ, and positions no linear classifier
separates from the rest. Both need different variables, that is, a head that attends elsewhere
(an MLP cannot help with a conflict: it reads variables of the same position, equal too).
Refinement rounds retrain everything at once and break what the refit held (reverse, Table 1
configuration: 2 wrong inputs after the refit, 135 after one straight-through round).

So this stage searches, greedily, the smallest change to a head there is: one query value's
key value in one head's predicate (categorical or numerical), made by raising that logit just
above the row's largest, so that the model stays a model of the same architecture and the
program its exact reading. Each of up to ``train.refit_edits`` steps:

1. finds the *targets*: the positions of the conflicts, and those the classifier puts short of
   its margin;
2. keeps the edits that change some variable at a target (a forward pass over those inputs
   alone), scores each on the whole domain by (conflicts, rows the current classifier puts short
   of its margin), and keeps the best edit of each (head, query value): the other key values of
   one query usually move the same rows;
3. refits the classifier for the best ``train.refit_candidates`` of them, in that order, and
   keeps the edit (with its classifier) that leaves the fewest inputs wrong, if fewer than
   before; a step that leaves none wrong ends the search, and so does one that improves
   nothing.

``repair.json`` records every refit tried, the edits kept and the wrong inputs after each; the
new model replaces model.pt only if it leaves fewer inputs wrong.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tprog.data import Dataset
from tprog.domain_check import encode_examples
from tprog.model.layout import Layout
from tprog.model.program import TransformerProgram
from tprog.readout import Problem, Refitter, variable_values
from tprog.rundir import Run, finish_stage, read_json_if_present
from tprog.vocab import Vocab

REPAIR = "repair.json"
KINDS = {"cat_attn": "categorical", "num_attn": "numerical"}  # a block's heads, and their kind

Edit = tuple[int, str, int, int, int]  # (layer, "cat_attn" | "num_attn", head, query, key)


def repair_predicates(run: Run, dataset: Dataset) -> dict[str, Any] | None:
    """Search predicate edits for the model in ``run.path`` (see the module docstring) and
    rewrite model.pt if they leave fewer inputs wrong; returns the record repair.json keeps
    (None when train.refit_edits is 0)."""
    cfg = run.config.train
    if not cfg.refit_edits:
        return None
    finished = read_json_if_present(run.path / REPAIR)
    if finished is not None:  # finished before the run was resumed: model.pt holds its outcome
        return finished
    started = time.perf_counter()
    model = run.load_model()
    refitter = Refitter(run, dataset, model)
    examples = [example for chunk, _ in refitter.domain.chunks for example in chunk]
    wrong = len(refitter.domain.check(model).wrong)
    record: dict[str, Any] = {"wrong_before": wrong, "edits": [], "tried": []}
    for step in range(1, cfg.refit_edits + 1):
        if not wrong:
            break
        problem = refitter.problem(model)
        targets = _targets(refitter, model, problem)
        moving = _moving(model, refitter.removed, targets, examples, dataset)
        candidates = _rank(refitter, model, moving)
        best = None
        for edit in candidates[: cfg.refit_candidates]:
            edited = edit_predicate(model, edit)
            refit, _ = refitter.refit(edited, refitter.problem(edited))
            n_wrong = len(refitter.domain.check(refit).wrong)
            shown = describe(edit, model, run.vocab)
            record["tried"].append({"step": step, "edit": shown, "wrong": n_wrong})
            if best is None or n_wrong < best[0]:
                best = (n_wrong, edit, refit)
            if not n_wrong:
                break
        if best is None or best[0] >= wrong:
            break
        wrong, edit, model = best
        record["edits"].append({"edit": describe(edit, model, run.vocab), "wrong_after": wrong})
    record["wrong_after"] = wrong
    return finish_stage(run, REPAIR, record, model if record["edits"] else None, started)


def repair_summary(run_dir: Path) -> dict[str, Any] | None:
    """What results.json says of the predicate edits (None without them)."""
    return read_json_if_present(Path(run_dir) / REPAIR)


def edit_predicate(model: TransformerProgram, edit: Edit) -> TransformerProgram:
    """A copy of ``model`` whose head ``edit`` names maps its query value to the key value it
    names: that logit raised 1 above its row's largest, the rest as they were."""
    layer, kind, head, query, key = edit
    edited = copy.deepcopy(model)
    predicate = getattr(edited.blocks[layer], kind).predicate  # [heads, d_var, d_var]
    with torch.no_grad():
        predicate[head, query, key] = predicate[head, query].max() + 1.0
    return edited


def describe(edit: Edit, model: TransformerProgram, vocab: Vocab) -> dict[str, Any]:
    """An edit as JSON: the head, the variables its query and key read, and the query value
    and key value the edit maps it to (a token where the variable is ``tokens``, else the
    value's index)."""
    layer, kind, head, query, key = edit
    chosen = getattr(model.blocks[layer], kind).chosen()
    names = [var.name for var in model.shape.layout.categorical()]  # in stack order
    query_variable, key_variable = names[chosen["query"][head]], names[chosen["key"][head]]

    def shown(variable: str, value: int) -> int | str:
        return vocab.tokens[value] if variable == "tokens" else value

    return {
        "head": Layout.head_name(layer, head, KINDS[kind]),
        "query_variable": query_variable,
        "query": shown(query_variable, query),
        "key_variable": key_variable,
        "key": shown(key_variable, key),
    }


def _edits(model: TransformerProgram, removed: list[str]) -> Iterator[Edit]:
    """Every single predicate edit of ``model``: each head (but those pruning ``removed``:
    nothing reads them), query value and other key value."""
    for layer, block in enumerate(model.blocks):
        for kind in KINDS:
            heads = getattr(block, kind)
            if heads is None:
                continue
            chosen = heads.predicate.argmax(-1).tolist()  # [heads][query] -> key
            for head, row in enumerate(chosen):
                if Layout.head_name(layer, head, KINDS[kind]) in removed:
                    continue
                for query, current in enumerate(row):
                    for key in range(len(row)):
                        if key != current:
                            yield (layer, kind, head, query, key)


def _targets(
    refitter: Refitter, model: TransformerProgram, problem: Problem
) -> list[tuple[int, int]]:
    """(input, position) of every conflict and of every row the classifier puts short."""
    short = problem.kept[refitter.short(model, problem)]
    conflicting = [row for group in problem.conflicts for row in group.tolist()]
    rows = sorted(set(short.tolist()) | set(conflicting))
    return [tuple(problem.rows.example[row].tolist()) for row in rows]


def _moving(
    model: TransformerProgram,
    removed: list[str],
    targets: list[tuple[int, int]],
    examples: list,
    dataset: Dataset,
) -> list[Edit]:
    """The edits that change some variable of ``model`` at a target position."""
    inputs = sorted({index for index, _ in targets})
    column = {index: n for n, index in enumerate(inputs)}
    split = encode_examples([examples[index] for index in inputs], dataset)
    rows = torch.tensor([column[index] for index, _ in targets])
    positions = torch.tensor([position for _, position in targets])

    def at_targets(edited: TransformerProgram) -> torch.Tensor:
        values = variable_values(edited, split, edited.hard_tables())  # [V + U, B, N]
        return values[:, rows, positions]  # [V + U, targets]

    before = at_targets(model)
    return [
        edit
        for edit in _edits(model, removed)
        if not torch.equal(at_targets(edit_predicate(model, edit)), before)
    ]


def _rank(refitter: Refitter, model: TransformerProgram, edits: list[Edit]) -> list[Edit]:
    """``edits`` best first by (conflicts, rows the current classifier puts short) on the whole
    domain, only the best of each (head, query value)."""
    scored = []
    for edit in edits:
        edited = edit_predicate(model, edit)
        problem = refitter.problem(edited)
        # the current classifier on the edited variables: how much a refit has to mend
        short = int(refitter.short(model, problem).sum())
        scored.append((len(problem.conflicts), short, edit))
    best: dict[tuple, Edit] = {}
    for *_, edit in sorted(scored):
        best.setdefault(edit[:4], edit)
    return list(best.values())
