"""The inputs a simplified program must agree on (its *basis*), and the program evaluated there.

Every simplification pass reads a program's variables on its basis (`environment`) and decides
on them; passes that only drop or fold classifier terms check their candidate against the
original on each distinct classifier row (`classifier_rows`, `predictions`), and make those
edits with `term_row`, `moved_term` and `without_term`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tprog.interpret import classifier_logits, evaluate
from tprog.ir import Program
from tprog.reachable import Reach, TokenSets, any_tokens, reach

CHUNK = 4096  # inputs per interpreter call: bounds the [chunk, n, n] selections
_ROWS = 1 << 16  # classifier rows per prediction call


@dataclass(frozen=True)
class Basis:
    """The inputs on which a simplified program must give every output its original gives."""

    ids: np.ndarray  # [B, n_ctx] token ids, 0-padded
    lengths: np.ndarray  # [B]
    description: str  # e.g. "the whole input domain (19530 inputs)"
    # Every input the program can be given: only then is a simplified program equal to its
    # original everywhere, and a difference found later a bug rather than expected.
    whole_domain: bool = False
    # Otherwise, per input length, the token ids each position may hold (None: any token
    # anywhere), from which `tprog.reachable` bounds what any input reaches.
    token_sets: TokenSets | None = None
    # The original program's variables on the basis (`environment`), evaluated once by
    # `simplify`: no pass changes a surviving variable's value at a real position of the basis,
    # so every later pass may read them instead of evaluating its input program again.
    env: dict[str, np.ndarray] | None = None

    def reach(self, program: Program) -> Reach:
        """What any input can reach: beyond the whole domain, the basis says too little."""
        return reach(program, self.token_sets or any_tokens(program))


def environment(program: Program, basis: Basis) -> dict[str, np.ndarray]:
    """Every variable of ``program`` on every basis input: name -> ``[B, n]``, each in the
    smallest integer type that holds it (a whole domain can be hundreds of thousands of inputs
    times dozens of variables). Values at padding positions are the original program's when
    ``basis.env`` holds them: they may differ from ``program``'s, but nothing reads them."""
    if basis.env is not None:
        return basis.env
    chunks = []  # each chunk in its own smallest type at once: int64 would not fit in memory
    for s in range(0, len(basis.ids), CHUNK):
        values = evaluate(program, basis.ids[s : s + CHUNK], basis.lengths[s : s + CHUNK])
        chunks.append({name: smallest_type(array) for name, array in values.items()})
    names = list(chunks[0]) if chunks else []
    # One variable at a time, each chunk's copy freed as it goes: at most one variable twice.
    return {name: np.concatenate([chunk.pop(name) for chunk in chunks]) for name in names}


def smallest_type(array: np.ndarray) -> np.ndarray:
    """``array`` in the smallest integer type that holds its values."""
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    return array.astype(np.result_type(np.min_scalar_type(low), np.min_scalar_type(high)))


def real_positions(basis: Basis) -> np.ndarray:
    """``[B, n]``: positions holding a token. Padding never reaches them (it is never an
    allowed key), so only values at real positions matter."""
    return np.arange(basis.ids.shape[1])[None, :] < basis.lengths[:, None]


def classifier_rows(
    program: Program, env: dict[str, np.ndarray], real: np.ndarray, extra: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Each distinct row of the classifier's inputs (its terms, ``ones``, ``tokens`` and the
    variables in ``extra``) over the real positions of the basis, as an environment of
    ``[U, 1]`` arrays (smallest types).

    A prediction is a function of that row alone, so candidates whose terms are among these
    variables give the same predictions at every real position iff they do on these rows: on
    a whole domain, hundreds or thousands of rows rather than millions of positions.
    """
    names = sorted({*program.classifier.terms, "ones", "tokens", *extra})
    at = None if real.all() else np.flatnonzero(real.ravel())  # [P]; None: every position

    def column(name: str) -> np.ndarray:  # [P], in its smallest type
        values = env[name].ravel()
        return values if at is None else values[at]

    key = np.zeros(real.sum(), dtype=np.int64)
    for name in names:  # a mixed-radix number per position, renumbered before it overflows
        values = column(name)
        low, span = value_range(values)
        if int(key.max(initial=0)) >= np.iinfo(np.int64).max // span - 1:
            key = np.searchsorted(np.unique(key), key)  # 0..U-1, in the same order
        key *= span
        key += values
        key -= low
    first = np.unique(key, return_index=True)[1]  # one position per distinct row
    first = first if at is None else at[first]
    return {name: env[name].ravel()[first, None] for name in names}


def predictions(program: Program, rows: dict[str, np.ndarray]) -> np.ndarray:
    """``[U]``: the predicted label id of each classifier row (`classifier_rows`), a chunk
    at a time: in int64, and with their logits, all rows would not fit in memory."""
    total = len(rows["ones"])
    out = np.empty(total, dtype=np.int64)
    for s in range(0, total, _ROWS):
        chunk = {name: values[s : s + _ROWS].astype(np.int64) for name, values in rows.items()}
        out[s : s + _ROWS] = classifier_logits(program, chunk)[:, 0].argmax(-1)
    return out


def value_range(values: np.ndarray) -> tuple[int, int]:
    """``(lowest value, number of integers from it to the highest)``; ``(0, 1)`` if empty."""
    if not values.size:
        return 0, 1
    low = int(values.min())
    return low, int(values.max()) - low + 1


# --- classifier edits --------------------------------------------------------------------


def term_row(program: Program, name: str, value: int) -> tuple[float, ...]:
    """What ``name``'s classifier term adds to the logits where ``name`` holds ``value``."""
    clf = program.classifier
    if name in clf.categorical:
        return clf.categorical[name][value]
    return tuple(weight * value for weight in clf.numerical[name])


def moved_term(program: Program, name: str, onto: str, weights: tuple) -> Program:
    """``program`` with ``onto``'s term set to ``weights`` (rows per value when ``onto`` is
    categorical, one row when numerical), added among the terms where missing, and ``name``'s
    term gone: ``name``'s weights folded onto ``onto``'s."""
    clf = program.classifier
    order = [var.name for var in program.variables]  # terms are added in creation order
    table = "categorical" if program.variable(onto).kind == "categorical" else "numerical"
    classifier = replace(
        clf,
        terms=tuple(sorted({*clf.terms, onto}, key=order.index)),
        **{table: {**getattr(clf, table), onto: weights}},
    )
    return without_term(replace(program, classifier=classifier), name)


def without_term(program: Program, name: str) -> Program:
    """``program`` without ``name``'s classifier term."""
    clf = program.classifier
    classifier = replace(
        clf,
        terms=tuple(term for term in clf.terms if term != name),
        categorical={k: v for k, v in clf.categorical.items() if k != name},
        numerical={k: v for k, v in clf.numerical.items() if k != name},
    )
    return replace(program, classifier=classifier)
