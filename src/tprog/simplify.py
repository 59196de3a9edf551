"""Semantics-preserving IR -> IR passes: the program a person reads, not the one extracted.

A pass may change what a program does only where no input of its *basis* can tell: the basis is
the task's whole input domain when it can be enumerated, else every train/val/test input, and
the program records which (``meta["simplified_on"]``). Every pass is checked on its basis:
predictions at every real position are unchanged (`tests/test_simplify.py`), and ``tprog verify``
re-checks the simplified program against the unsimplified one.

Passes, in order:
  * `remove_dead_modules`: classifier terms that never change a prediction go; then so does
    every module whose variable has no term left and which no live module reads;
  * `restrict_to_reachable`: each variable's values on the basis are recorded
    (``Variable.values``); predicate rows of query values that never occur, or that ask for a
    key value that never occurs, become "matches nothing" (-1); MLP table entries of input
    pairs that never occur take the table's most common output, so tables print as a default
    and exceptions. (Tables keep their shape: the interpreter evaluates padding positions too,
    whose inputs may lie anywhere in the derived bounds.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from tprog.interpret import classifier_logits, evaluate
from tprog.ir import NEVER, CatAttention, Module, NumAttention, NumMLP, Program

_CHUNK = 4096  # inputs per interpreter call: bounds the [chunk, n, n] selections


@dataclass(frozen=True)
class Basis:
    """The inputs on which a simplified program must give every output its original gives."""

    ids: np.ndarray  # [B, n_ctx] token ids, 0-padded
    lengths: np.ndarray  # [B]
    description: str  # e.g. "the whole input domain (19530 inputs)"


def simplify(program: Program, basis: Basis) -> Program:
    """All passes in order; the result records its basis in ``meta["simplified_on"]``."""
    for simplification in PASSES:
        program = simplification(program, basis)
    return replace(program, meta={**program.meta, "simplified_on": basis.description})


def remove_dead_modules(program: Program, basis: Basis) -> Program:
    """Drop, latest first, every classifier term that no prediction on the basis needs, then
    every module whose variable has no term left and no live module reads.

    Latest first, because a module can only become unread once the later ones reading it are
    gone. Input variables keep existing (``run`` computes them) but may lose their term.
    """
    env = _environment(program, basis)
    real = _real_positions(basis)
    reference = _predictions(program, env, real)
    produced = {module.name for module in program.modules}
    for name in reversed([var.name for var in program.variables]):
        if name in program.classifier.terms:
            candidate = _without_term(program, name)
            if np.array_equal(_predictions(candidate, env, real), reference):
                program = candidate
        unused = name not in program.classifier.terms and not _is_read(program, name)
        if name in produced and unused:
            program = _without_module(program, name)
    return program


def restrict_to_reachable(program: Program, basis: Basis) -> Program:
    """Record every variable's values on the basis and canonicalise what they never reach."""
    env = _environment(program, basis)
    real = _real_positions(basis)
    seen = {var.name: np.unique(env[var.name][real]) for var in program.variables}
    modules = tuple(_restrict(module, env, real, seen) for module in program.modules)
    variables = tuple(
        replace(var, values=tuple(int(v) for v in seen[var.name])) for var in program.variables
    )
    return replace(program, modules=modules, variables=variables)


PASSES: tuple[Callable[[Program, Basis], Program], ...] = (
    remove_dead_modules,
    restrict_to_reachable,
)


# --- evaluation on the basis -------------------------------------------------------------


def _environment(program: Program, basis: Basis) -> dict[str, np.ndarray]:
    """Every variable of ``program`` on every basis input: name -> ``[B, n]``."""
    chunks = [
        evaluate(program, basis.ids[s : s + _CHUNK], basis.lengths[s : s + _CHUNK])
        for s in range(0, len(basis.ids), _CHUNK)
    ]
    names = chunks[0].keys() if chunks else ()
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in names}


def _real_positions(basis: Basis) -> np.ndarray:
    """``[B, n]``: positions holding a token. Padding never reaches them (it is never an
    allowed key), so only values at real positions matter."""
    return np.arange(basis.ids.shape[1])[None, :] < basis.lengths[:, None]


def _predictions(program: Program, env: dict[str, np.ndarray], real: np.ndarray) -> np.ndarray:
    out = np.empty(real.shape, dtype=np.int64)
    for s in range(0, len(real), _CHUNK):
        chunk = {name: values[s : s + _CHUNK] for name, values in env.items()}
        out[s : s + _CHUNK] = classifier_logits(program, chunk).argmax(-1)
    return out[real]


# --- dead modules ------------------------------------------------------------------------


def _reads(module: Module) -> tuple[str, ...]:
    if isinstance(module, CatAttention | NumAttention):
        return (module.query, module.key, module.value)
    return module.inputs


def _is_read(program: Program, name: str) -> bool:
    return any(name in _reads(module) for module in program.modules)


def _without_term(program: Program, name: str) -> Program:
    clf = program.classifier
    classifier = replace(
        clf,
        terms=tuple(term for term in clf.terms if term != name),
        categorical={k: v for k, v in clf.categorical.items() if k != name},
        numerical={k: v for k, v in clf.numerical.items() if k != name},
    )
    return replace(program, classifier=classifier)


def _without_module(program: Program, name: str) -> Program:
    return replace(
        program,
        modules=tuple(m for m in program.modules if m.name != name),
        variables=tuple(v for v in program.variables if v.name != name),
    )


# --- reachable values --------------------------------------------------------------------


def _restrict(module: Module, env: dict, real: np.ndarray, seen: dict) -> Module:
    if isinstance(module, CatAttention | NumAttention):
        queries, keys = set(seen[module.query].tolist()), set(seen[module.key].tolist())
        predicate = tuple(
            target if query in queries and target in keys else NEVER
            for query, target in enumerate(module.predicate)
        )
        return replace(module, predicate=predicate)
    a, b = (env[name][real] for name in module.inputs)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    lows = module.lows if isinstance(module, NumMLP) else (0, 0)
    return replace(module, table=_fill(module.table, pairs, lows))


def _fill(
    table: tuple[tuple[int, ...], ...], pairs: set[tuple[int, int]], lows: tuple[int, int]
) -> tuple[tuple[int, ...], ...]:
    """``table`` with every entry no pair in ``pairs`` reaches set to the most common output
    of those it reaches (the smallest on ties), so that it prints as a default and exceptions."""
    used = Counter(table[a - lows[0]][b - lows[1]] for a, b in pairs)
    default = min(used, key=lambda out: (-used[out], out)) if used else 0
    return tuple(
        tuple(
            out if (row + lows[0], col + lows[1]) in pairs else default
            for col, out in enumerate(outputs)
        )
        for row, outputs in enumerate(table)
    )
