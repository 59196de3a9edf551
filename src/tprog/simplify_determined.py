"""`fold_determined`: a module whose variable is a function of an earlier categorical variable
on the whole domain is read through that variable instead, and goes.

Trained programs spend modules on relabellings: an MLP of (position, position) whose output
depends on the position alone, a later MLP that only renames an earlier one's values. Every
reader of such a variable ``x = f(y)`` can read ``y`` instead:

  * a predicate reading ``x`` as its query asks, for query value ``y``, what it asked for
    ``f(y)``;
  * as its key, with the predicate rewritten where ``f`` is one-to-one on the values that occur,
    else through a ``key_map`` (``f(k) == t`` may hold for several ``k``, and a predicate names
    one key value per query value): the head compares ``f(k)``, and prints as ``k in {...}``;
  * as a head's value, only where ``f`` is the identity: the head copies the value itself;
  * an MLP's table is composed with ``f``;
  * the classifier's rows of ``x`` move onto those of ``y`` (a numerical ``x``: its row times
    ``f(y)``), which is where float addition, not being associative, may change a prediction:
    every fold is checked on each distinct classifier row of the basis.

Decided on the whole domain only. On a sample, a function seen there need not be one on other
inputs, and `tprog.reachable`'s bounds forget which values occur together.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tprog.ir import (
    NEVER,
    CatAttention,
    Module,
    NumAttention,
    NumMLP,
    Program,
    is_read,
)
from tprog.simplify_basis import (
    Basis,
    classifier_rows,
    environment,
    moved_term,
    predictions,
    real_positions,
    term_row,
    value_range,
)

Mapping = dict[int, int]  # value of y -> value of x, for every value y holds on the basis
# Positions every candidate pair is first tested on: a whole domain can have millions.
_PREFIX = 1 << 15


def fold_determined(program: Program, basis: Basis) -> Program:
    """Latest module first, read each variable that is a function of an earlier categorical
    variable (the first such, inputs first) through that variable, where every reader allows
    it and no prediction on the basis changes. `remove_dead_modules` then drops the module.

    Latest first, so that a chain ``x2 = g(x1)``, ``x1 = f(y)`` ends at ``y``: by the time
    ``x1`` is folded, ``x2``'s readers already read ``x1``.
    """
    if not basis.whole_domain:
        return program
    env, real = environment(program, basis), real_positions(basis)
    order = [var.name for var in program.variables]
    categorical = {var.name for var in program.variables if var.kind == "categorical"}
    at_real: dict[str, np.ndarray] = {}  # variable -> its values at real positions, [P]

    def values(name: str) -> np.ndarray:
        if name not in at_real:
            at_real[name] = env[name][real]
        return at_real[name]

    for module in reversed(program.modules):
        name = module.name
        if name not in program.classifier.terms and not is_read(program, name):
            continue  # already dead
        for source in (v for v in order[: order.index(name)] if v in categorical):
            # Most pairs are no function on the first positions already: a cheap refusal.
            if function_of(values(source)[:_PREFIX], values(name)[:_PREFIX]) is None:
                continue
            mapping = function_of(values(source), values(name))
            candidate = None if mapping is None else read_through(program, name, source, mapping)
            if candidate is None:
                continue
            rows = classifier_rows(program, env, real, extra=(source,))
            if np.array_equal(predictions(candidate, rows), predictions(program, rows)):
                program = candidate
                break
    return program


def function_of(source: np.ndarray, target: np.ndarray) -> Mapping | None:
    """``{s: t}`` when ``target`` is a function of ``source`` position by position (both
    ``[P]``, non-negative integers), else None."""
    low, span = value_range(target)
    codes = source.astype(np.int64) * span + (target.astype(np.int64) - low)
    cells = (int(source.max(initial=0)) + 1) * span
    seen = np.bincount(codes, minlength=cells).reshape(-1, span) > 0  # [source values, span]
    if (seen.sum(1) > 1).any():
        return None
    return {int(s): int(seen[s].argmax()) + low for s in np.flatnonzero(seen.any(1))}


def read_through(program: Program, name: str, source: str, mapping: Mapping) -> Program | None:
    """``program`` with every reader of ``name`` reading ``source`` (``name == mapping[source]``
    wherever ``source`` occurs), or None if some reader cannot."""
    kind = program.variable(name).kind
    modules = []
    for module in program.modules:
        rewritten = _reader_through(module, name, kind, source, mapping, program.d_var)
        if rewritten is None:
            return None
        modules.append(rewritten)
    return _classifier_through(replace(program, modules=tuple(modules)), name, source, mapping)


def _reader_through(
    module: Module, name: str, kind: str, source: str, mapping: Mapping, d_var: int
) -> Module | None:
    if isinstance(module, CatAttention | NumAttention):
        return _head_through(module, name, kind, source, mapping, d_var)
    if name not in module.inputs:
        return module
    if isinstance(module, NumMLP):
        return None  # a numerical MLP reads numerical variables only
    # Every value of source, also those that never occur (any output: nothing reaches them),
    # stands for a value of name the table has a row or column for.
    fallback = next(iter(mapping.values()))
    through = [mapping.get(value, fallback) for value in range(d_var)]
    rows, columns = (through if inp == name else range(d_var) for inp in module.inputs)
    table = tuple(tuple(module.table[a][b] for b in columns) for a in rows)
    inputs = tuple(source if inp == name else inp for inp in module.inputs)
    return replace(module, inputs=inputs, table=table)


def _head_through(
    head: CatAttention | NumAttention,
    name: str,
    kind: str,
    source: str,
    mapping: Mapping,
    d_var: int,
) -> CatAttention | NumAttention | None:
    if name not in (head.query, head.key, head.value):
        return head
    if head.value == name and (kind != "categorical" or any(s != t for s, t in mapping.items())):
        return None  # the head would copy (or sum) source's values instead of name's
    predicate = head.predicate
    if head.query == name:  # query value s asks for what f(s) asked for
        predicate = tuple(predicate[mapping[s]] if s in mapping else NEVER for s in range(d_var))
    key_map = head.key_map
    if head.key == name:  # key value s matches where f(s) did
        inverse = {t: s for s, t in mapping.items()}
        if key_map is None and len(inverse) == len(mapping):  # one s per target, or none
            predicate = tuple(inverse.get(target, NEVER) for target in predicate)
        else:  # s is compared as f(s); a value that never occurs, as one no query asks for
            compared = key_map or range(d_var)
            key_map = tuple(compared[mapping[s]] if s in mapping else d_var for s in range(d_var))
    return replace(
        head,
        query=source if head.query == name else head.query,
        key=source if head.key == name else head.key,
        value=source if head.value == name else head.value,
        predicate=predicate,
        key_map=key_map,
    )


def _classifier_through(program: Program, name: str, source: str, mapping: Mapping) -> Program:
    """``program`` with ``name``'s weights at ``f(s)`` added to ``source``'s row ``s``."""
    clf = program.classifier
    if name not in clf.terms:
        return program
    zeros = tuple(0.0 for _ in clf.labels)
    base = clf.categorical[source] if source in clf.terms else (zeros,) * program.d_var
    rows = tuple(
        tuple(b + m for b, m in zip(row, term_row(program, name, mapping[value]), strict=True))
        if value in mapping
        else row  # never at a real position
        for value, row in enumerate(base)
    )
    return moved_term(program, name, source, rows)
