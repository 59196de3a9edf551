"""Refitting the classifier on the task's whole domain as a linear program.

A program's last step is linear. At every position its label is the argmax, over labels, of

    sum over categorical variables v of w_cat[v, value of v]
    + sum over numerical variables u of w_num[u] * (value of u)

(`TransformerProgram._hard_logits`). Hold every head and MLP fixed and the variables at each
scored position of a finite domain are fixed too, so "a classifier right on every input" is a
set of linear inequalities in the weights: at each position, its label leads each other label by
``_MARGIN``. Training reaches the classifier only through the relaxation and its loss, and can
leave inputs wrong that some classifier gets right (reverse at its Table 1 configuration, pruned
and refined: 25 of its 27 wrong inputs). `refit_readout` asks a linear programming solver
(HiGHS, through scipy) for a classifier that satisfies them all and reads as few variables as
it can (the sum over variables of their largest |weight|: a module that only the classifier
read, and no longer does, is dead to simplification), or, where none satisfies them all, for
the least total shortfall of the margin, a convex stand-in for the number of positions wrong
(see `_solve`).

Positions where the variables take the same values as at a position with another label are
*conflicts*: no classifier tells them apart, and the stage reports them. Of each set of
positions that share their values, the linear program asks for the label most of them have (the
lowest on a tie). The inequalities number (distinct positions x labels), most of them slack at
the solution, so the program starts from a few thousand positions (and those wrong now) and
adds those its solution gets wrong until there are none outside it (constraint generation).

The new classifier replaces the old one unless more inputs are then wrong, as the hard model
measures it; ``readout.json`` records the figures either way. The weights of the variables of
modules that pruning removed stay 0.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse
import torch

from tprog.data import Dataset, Split
from tprog.domain_check import DomainInputs
from tprog.errors import TprogError
from tprog.model.program import TransformerProgram
from tprog.prune import removed_modules
from tprog.rundir import Run, finish_stage, read_json_if_present
from tprog.verify import WHOLE_DOMAIN

READOUT = "readout.json"
_MARGIN = 1.0  # in units of the weights: the linear program chooses their scale
_SLACK_COST = 1e4  # per unit of margin a row misses, against 1 per variable's largest |weight|
_L1_COST = 1e-3  # per unit of |weight|: among classifiers that weigh the same, the sparsest
_RIGHT = _MARGIN / 2  # a position whose label leads by this much is right, rounding or not
_START_ROWS = 2000  # distinct positions the first linear program holds, beside those wrong now
_ADD_ROWS = 4000  # the most violated positions added per iteration
_MAX_ITERATIONS = 60
_MAX_CONFLICTS = 5  # conflicts readout.json spells out


class ReadoutError(TprogError):
    """The classifier cannot be refit on this run."""


@dataclass(frozen=True)
class Rows:
    """The distinct (variables, label) pairs at the scored positions of a set of inputs, each
    with how many positions have it and one of them to show (input index, position)."""

    values: np.ndarray  # [R, V + U] int64: categorical values, then numerical ones
    labels: np.ndarray  # [R]
    counts: np.ndarray  # [R]
    example: np.ndarray  # [R, 2]

    def merge(self, other: Rows) -> Rows:
        """Both sets of rows as one, the counts of the pairs they share summed."""
        return distinct(
            np.concatenate([self.values, other.values]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.counts, other.counts]),
            np.concatenate([self.example, other.example]),
        )


def distinct(values, labels, counts, example) -> Rows:
    """`Rows` of the distinct (values, label) pairs among those given, counts summed."""
    keys = np.column_stack([values, labels])
    unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=counts, minlength=len(unique))
    return Rows(unique[:, :-1], unique[:, -1], summed.astype(np.int64), example[first])


@torch.no_grad()
def variable_values(model: TransformerProgram, split: Split, tables: list) -> torch.Tensor:
    """``[V + U, B, N]``: every variable of the hard model on ``split`` in stack order, the
    categorical values, then the numerical ones (sums of 0/1 matches times integers)."""
    cat, num = model.stream(
        torch.as_tensor(split.ids), torch.as_tensor(split.lengths), None, tables
    )
    return torch.cat([chunk.argmax(-1) for chunk in cat] + [torch.cat(num).long()])


def scored_rows(model: TransformerProgram, split: Split, tables: list, first_input: int) -> Rows:
    """The hard model's variables at every position of ``split`` whose target is not
    ``<pad>``, its inputs numbered from ``first_input``."""
    values = variable_values(model, split, tables)
    targets = torch.as_tensor(split.target_ids)
    scored = targets != 0
    inputs, offsets = torch.nonzero(scored, as_tuple=True)
    return distinct(
        values.permute(1, 2, 0)[scored].numpy(),  # [P, V + U]
        targets[scored].numpy(),
        np.ones(len(inputs), np.int64),
        np.column_stack([inputs.numpy() + first_input, offsets.numpy()]),
    )


def design_matrix(values: np.ndarray, n_cat: int, d_var: int) -> scipy.sparse.csr_matrix:
    """``[rows, V * d_var + U]``: the one-hot of each categorical value, then the numerical
    values, so that ``design @ W`` with ``W = [w_cat.reshape(-1, L); w_num]`` is the
    classifier's logits."""
    n_rows, n_num = len(values), values.shape[1] - n_cat
    columns = np.concatenate(
        [
            (values[:, :n_cat] + d_var * np.arange(n_cat)).ravel(),
            np.tile(n_cat * d_var + np.arange(n_num), n_rows),
        ]
    )
    data = np.concatenate([np.ones(n_rows * n_cat), values[:, n_cat:].ravel().astype(float)])
    row_ids = np.concatenate(
        [np.repeat(np.arange(n_rows), n_cat), np.repeat(np.arange(n_rows), n_num)]
    )
    shape = (n_rows, n_cat * d_var + n_num)
    return scipy.sparse.csr_matrix((data, (row_ids, columns)), shape=shape)


def column_groups(n_cat: int, d_var: int, n_num: int) -> np.ndarray:
    """The variable each column of `design_matrix` belongs to: ``d_var`` columns for each
    categorical variable, then one for each numerical variable."""
    return np.concatenate([np.repeat(np.arange(n_cat), d_var), n_cat + np.arange(n_num)])


def resolve_conflicts(rows: Rows) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(kept, conflicts)``: the indices of the rows the classifier must get right (of the
    rows sharing their variables, the one with most positions; on a tie the lowest label), and
    for each set of rows that share their variables but not their label, its indices."""
    _, vector = np.unique(rows.values, axis=0, return_inverse=True)
    vector = vector.ravel()
    order = np.lexsort((rows.labels, -rows.counts, vector))  # per vector: most positions first
    first = np.ones(len(order), dtype=bool)
    first[1:] = vector[order[1:]] != vector[order[:-1]]
    kept = np.sort(order[first])
    shared = np.bincount(vector) > 1
    conflicts = [np.flatnonzero(vector == v) for v in np.flatnonzero(shared)]
    return kept, conflicts


def fit_classifier(
    design: scipy.sparse.csr_matrix,
    labels: np.ndarray,
    allowed: np.ndarray,
    groups: np.ndarray,
    start: np.ndarray,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The classifier ``W [columns, L]`` that the linear program of `_solve` chooses over all
    rows, by constraint generation from the rows ``start``: solve over the rows held, add the
    rows outside them whose label does not lead by ``_RIGHT``, until there are none."""
    active = np.unique(start)
    for iteration in range(1, _MAX_ITERATIONS + 1):
        weights, slack = _solve(design[active], labels[active], allowed, groups)
        lead = _leads(design @ weights, labels, allowed)
        outside = np.setdiff1d(np.flatnonzero(lead < _RIGHT), active, assume_unique=True)
        if not len(outside):
            facts = {
                "lp_iterations": iteration,
                "lp_rows": len(active),
                "lp_rows_short": int((slack > 0).sum()),  # rows the margin could not hold
            }
            return weights, facts
        worst = outside[np.argsort(lead[outside], kind="stable")[:_ADD_ROWS]]
        active = np.union1d(active, worst)
    raise ReadoutError(
        f"refitting the classifier did not converge in {_MAX_ITERATIONS} linear programs."
    )


def _leads(logits: np.ndarray, labels: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Per row, its label's logit minus the best other allowed label's."""
    rows = np.arange(len(labels))
    others = np.where(allowed, logits, -np.inf)
    own = logits[rows, labels]
    others[rows, labels] = -np.inf
    return own - others.max(1)


def _solve(
    design: scipy.sparse.csr_matrix, labels: np.ndarray, allowed: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One linear program over rows (x, y): ``(W, slack)`` subject to
    ``(W[:, y] - W[:, c]) . x >= _MARGIN - slack[row]`` for every allowed label c != y,
    minimising ``_SLACK_COST * sum(slack) + sum over variables of max |W| of its rows`` (plus
    ``_L1_COST * sum |W|`` to choose among equals). ``groups[column]`` is the variable a column
    of the design belongs to.

    When some W makes every label lead (the rows are linearly separable), slack is 0 and W
    weighs as few variables as it can: the largest |weight| of each variable is a convex
    stand-in for whether the classifier reads it at all, and a module that only the classifier
    read, and now reads at weight 0, is dead to simplification. When no W separates the rows,
    slack says by how much each misses: its sum is a convex stand-in for the number wrong.

    Variables: W = P - M with P, M >= 0 ([columns, labels] each, flattened), slack >= 0 per
    row, and per variable a bound B >= P + M on each of its entries."""
    n_rows, n_cols = design.shape
    n_labels = len(allowed)
    n_groups = int(groups.max()) + 1
    n_vars = n_cols * n_labels  # entries of P (then as many of M)
    slack_at, bound_at = 2 * n_vars, 2 * n_vars + n_rows  # where the other variables start
    blocks, n_constraints = [], 0
    for competitor in np.flatnonzero(allowed):
        rivals = np.flatnonzero(labels != competitor)
        part = design[rivals].tocoo()  # [rows, columns]
        own = labels[rivals][part.row]
        row = part.row + n_constraints
        for sign, label in ((-1.0, own), (1.0, np.full_like(own, competitor))):
            entry = part.col * n_labels + label
            blocks += [(row, entry, sign * part.data), (row, n_vars + entry, -sign * part.data)]
        constraint = np.arange(len(rivals)) + n_constraints
        blocks.append((constraint, slack_at + rivals, -np.ones(len(rivals))))
        n_constraints += len(rivals)
    # P + M - B[group] <= 0 for every entry
    entry = np.arange(n_vars)
    row = entry + n_constraints
    blocks += [
        (row, entry, np.ones(n_vars)),
        (row, n_vars + entry, np.ones(n_vars)),
        (row, bound_at + groups[entry // n_labels], -np.ones(n_vars)),
    ]
    rows, cols, data = (np.concatenate(parts) for parts in zip(*blocks, strict=True))
    shape = (n_constraints + n_vars, bound_at + n_groups)
    bounds = np.full(shape[0], 0.0)
    bounds[:n_constraints] = -_MARGIN
    # A masked label's entries appear in no margin constraint, so their cost keeps them at 0.
    cost = np.concatenate(
        [np.full(2 * n_vars, _L1_COST), np.full(n_rows, _SLACK_COST), np.ones(n_groups)]
    )
    result = scipy.optimize.linprog(
        cost,
        A_ub=scipy.sparse.csr_matrix((data, (rows, cols)), shape=shape),
        b_ub=bounds,
        bounds=(0, None),
        method="highs",
    )
    if result.status != 0:  # it is always feasible (slack) and bounded (costs >= 0)
        raise ReadoutError(f"the linear program for the classifier failed: {result.message}")
    x = result.x
    return (x[:n_vars] - x[n_vars:slack_at]).reshape(n_cols, n_labels), x[slack_at:bound_at]


class Refitter:
    """The classifier's linear program for models of one run on its whole domain: the rows of a
    model's variables, and the refit classifier they admit."""

    def __init__(self, run: Run, dataset: Dataset, model: TransformerProgram) -> None:
        self.domain = DomainInputs(run, dataset, np.random.default_rng(run.config.seed))
        if self.domain.mode != WHOLE_DOMAIN:
            raise ReadoutError(
                f"refitting the classifier needs every input of the task's domain, and "
                f"{run.config.task}'s is too large to enumerate (tprog verify checks a "
                f"{self.domain.mode})."
            )
        self.seed = run.config.seed
        self.n_cat, self.d_var = len(model.shape.layout.categorical()), model.shape.d_var
        self.groups = column_groups(self.n_cat, self.d_var, len(model.shape.layout.numerical()))
        self.allowed = ~model.masked.cpu().numpy()
        self._remove(model, removed_modules(run.path, model))

    def without(self, model: TransformerProgram, removed: list[str]) -> Refitter:
        """The same linear program with the modules ``removed`` removed (the domain, encoded
        once, shared)."""
        other = copy.copy(self)
        other._remove(model, removed)
        return other

    def _remove(self, model: TransformerProgram, removed: list[str]) -> None:
        self.removed = list(removed)
        usable = _usable_columns(model, self.removed, self.groups)
        self.usable = scipy.sparse.diags(usable)
        # variables the classifier may not weigh: a removed module still computes its own
        # variable, and two positions that differ only there are a conflict all the same
        self.unusable_vars = np.unique(self.groups[usable == 0])

    def problem(self, model: TransformerProgram) -> Problem:
        """``model``'s rows on the domain, its conflicts, and the linear program's data."""
        rows = _domain_rows(model, self.domain)
        if len(self.unusable_vars):
            values = rows.values.copy()
            values[:, self.unusable_vars] = 0
            rows = distinct(values, rows.labels, rows.counts, rows.example)
        kept, conflicts = resolve_conflicts(rows)
        design = design_matrix(rows.values[kept], self.n_cat, self.d_var) @ self.usable
        return Problem(rows, kept, conflicts, design, rows.labels[kept])

    def leads(self, model: TransformerProgram, problem: Problem) -> np.ndarray:
        """Per kept row of ``problem``, by how much ``model``'s classifier puts its label ahead."""
        return _leads(problem.design @ _classifier(model), problem.labels, self.allowed)

    def short(self, model: TransformerProgram, problem: Problem) -> np.ndarray:
        """Per kept row of ``problem``, whether ``model``'s classifier leaves it short of the
        lead that counts as right (wrong, or right only by a rounding)."""
        return self.leads(model, problem) < _RIGHT

    def refit(
        self, model: TransformerProgram, problem: Problem
    ) -> tuple[TransformerProgram, dict[str, Any]]:
        """A copy of ``model`` with the classifier the linear program chooses on ``problem``
        (``model``'s own rows), and the solver's figures."""
        wrong_now = np.flatnonzero(self.leads(model, problem) <= 0)
        order = np.random.default_rng(self.seed).permutation(len(problem.kept))
        start = np.union1d(order[:_START_ROWS], wrong_now)
        weights, facts = fit_classifier(
            problem.design, problem.labels, self.allowed, self.groups, start
        )
        refit = copy.deepcopy(model)
        _set_classifier(refit, weights)
        facts["total_weight"] = float(np.abs(weights).sum())
        facts["variables_weighed"] = _variables_weighed(weights, self.groups)
        return refit, facts


@dataclass(frozen=True)
class Problem:
    """A model's rows on the domain, and the linear program's data: the rows it must get right
    (``kept``, one per set of rows sharing their variables), their design matrix and labels."""

    rows: Rows
    kept: np.ndarray
    conflicts: list[np.ndarray]
    design: scipy.sparse.csr_matrix
    labels: np.ndarray


def refit_readout(run: Run, dataset: Dataset) -> dict[str, Any] | None:
    """Refit the classifier of the model in ``run.path`` (see the module docstring) and rewrite
    model.pt with it unless it leaves more inputs wrong; returns the record readout.json keeps
    (None when train.refit_readout is off)."""
    if not run.config.train.refit_readout:
        return None
    finished = read_json_if_present(run.path / READOUT)
    if finished is not None:  # finished before the run was resumed: model.pt holds its outcome
        return finished
    started = time.perf_counter()
    model = run.load_model()
    refitter = Refitter(run, dataset, model)
    before = refitter.domain.check(model)
    problem = refitter.problem(model)
    refit, facts = refitter.refit(model, problem)
    after = refitter.domain.check(refit)
    rows, conflicts = problem.rows, problem.conflicts
    record = {
        "domain": refitter.domain.mode,
        "n_inputs": before.n_inputs,
        "n_positions": int(rows.counts.sum()),
        "n_distinct": len(rows.labels),
        "n_conflicts": len(conflicts),
        "conflicts": _describe(rows, conflicts[:_MAX_CONFLICTS], refitter.domain),
        "wrong_before": len(before.wrong),
        "wrong_after": len(after.wrong),
        "kept": len(after.wrong) <= len(before.wrong),
        **facts,
    }
    return finish_stage(run, READOUT, record, refit if record["kept"] else None, started)


def readout_summary(run_dir: Path) -> dict[str, Any] | None:
    """What results.json says of the refit (None without one)."""
    return read_json_if_present(Path(run_dir) / READOUT)


def _domain_rows(model: TransformerProgram, domain: DomainInputs) -> Rows:
    tables = model.hard_tables()
    rows, first = None, 0
    for examples, split in domain.chunks:
        chunk = scored_rows(model, split, tables, first)
        rows = chunk if rows is None else rows.merge(chunk)
        first += len(examples)
    return rows


def _describe(
    rows: Rows, conflicts: list[np.ndarray], domain: DomainInputs
) -> list[list[dict[str, Any]]]:
    """Per conflict, per label: one position that has it, and how many do."""
    examples = [example for chunk, _ in domain.chunks for example in chunk]
    described = []
    for group in conflicts:
        described.append([])
        for row in group.tolist():
            index, position = rows.example[row].tolist()
            tokens, targets = examples[index]
            described[-1].append(
                {
                    "input": list(tokens),
                    "position": position,
                    "label": targets[position],
                    "positions": int(rows.counts[row]),
                }
            )
    return described


def _usable_columns(
    model: TransformerProgram, removed: list[str], groups: np.ndarray
) -> np.ndarray:
    """1.0 for each column of the design matrix the classifier may weigh, 0.0 for those of the
    variables of modules that pruning removed (their weights are held at 0); ``groups`` is
    `column_groups`, the variable of each column."""
    categorical, numerical = model.shape.layout.categorical(), model.shape.layout.numerical()
    gone = [var.index for var in categorical if var.name in removed]
    gone += [len(categorical) + var.index for var in numerical if var.name in removed]
    return (~np.isin(groups, gone)).astype(np.float64)


def _variables_weighed(weights: np.ndarray, groups: np.ndarray) -> int:
    """How many variables the classifier ``weights`` gives any weight."""
    largest = np.zeros(int(groups.max()) + 1)
    np.maximum.at(largest, groups, np.abs(weights).max(1))
    return int((largest > 1e-9).sum())


def _classifier(model: TransformerProgram) -> np.ndarray:
    """The classifier as ``[V * d_var + U, L]``, rows in `design_matrix`'s column order."""
    n_labels = model.w_num.shape[1]
    weights = torch.cat([model.w_cat.detach().reshape(-1, n_labels), model.w_num.detach()])
    return weights.double().cpu().numpy()


def _set_classifier(model: TransformerProgram, weights: np.ndarray) -> None:
    n_cat_rows = model.w_cat.shape[0] * model.w_cat.shape[1]
    with torch.no_grad():
        model.w_cat.copy_(torch.as_tensor(weights[:n_cat_rows]).view_as(model.w_cat))
        model.w_num.copy_(torch.as_tensor(weights[n_cat_rows:]).view_as(model.w_num))
