"""Which values each variable of a program can hold, on every input: an over-approximation.

Simplification may rewrite what no input reaches. When the basis is the task's whole domain,
running the program on it says exactly what is reached; otherwise (a domain too large to
enumerate, or none declared) the train/val/test inputs say too little: an input nobody drew
reaches table entries none of them did. This module bounds what *any* input can reach, by
running the program on sets of values instead of values (abstract interpretation), one input
length at a time, every position at once:

* ``tokens`` at position ``p`` of an input of length ``L``: the tokens the domain allows there
  (every non-padding token, where the domain does not say); ``positions`` is ``p``, ``ones`` 1;
* a categorical head at query ``i``: the value at every key ``j`` it may select (allowed, and
  some query value of ``i`` wants some key value of ``j``), and at BOS, its default, unless
  some key always holds a value that every query value of ``i`` wants;
* a numerical head: an interval, the sums of the negative and of the positive ends of its
  value over the keys it may select;
* an MLP: its table over every pair of the input values at the same position.

Every step keeps every value a real input can produce, so what this leaves out no input reaches.
It is less precise than running a whole domain: it forgets which values occur together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tprog.ir import CatAttention, CatMLP, NumAttention, NumMLP, Program, matched_keys

# input length -> the token ids each position of an input of that length may hold
TokenSets = Mapping[int, Sequence[Sequence[int]]]


@dataclass(frozen=True)
class Reach:
    """What inputs of every length can reach, at real positions."""

    values: dict[str, tuple[int, ...]]  # variable -> every value it can hold (sorted)
    pairs: dict[str, np.ndarray]  # MLP -> bool [table rows, table columns]: entries reached
    meets: dict[str, np.ndarray]  # head -> bool [d_var, d_var]: query value q may see key v


def any_tokens(program: Program) -> dict[int, list[list[int]]]:
    """Every non-padding token at every position, for inputs of every length. (Each length
    counts: with fewer keys, a head that always finds a match may find none.)"""
    ids = list(range(1, len(program.vocab)))
    return {length: [ids] * length for length in range(1, program.n_ctx + 1)}


def reach(program: Program, token_sets: TokenSets) -> Reach:
    """`Reach` of ``program`` over the inputs ``token_sets`` describes (see the module
    docstring)."""
    found = Reach({}, {}, {})
    seen: dict[str, set[int]] = {var.name: set() for var in program.variables}
    for length, tokens in sorted(token_sets.items()):
        if not 0 < length <= program.n_ctx or len(tokens) != length:
            raise ValueError(f"token sets for length {length} must give one set per position.")
        cat, num = _run(program, length, tokens, found)
        for name, present in cat.items():
            seen[name].update(np.flatnonzero(present.any(0)).tolist())
        for name, (low, high) in num.items():
            seen[name].update(range(int(low.min()), int(high.max()) + 1))
    return Reach({name: tuple(sorted(v)) for name, v in seen.items()}, found.pairs, found.meets)


def _run(program: Program, length: int, tokens: Sequence[Sequence[int]], found: Reach):
    """One input length: categorical variables as bool ``[length, d_var]`` (value v possible at
    position p), numerical ones as ``(low, high)`` int arrays ``[length]``; records the MLP
    pairs and head meets of this length in ``found``."""
    d_var = program.d_var
    cat = {"tokens": np.zeros((length, d_var), dtype=bool), "positions": np.eye(length, d_var) > 0}
    for position, ids in enumerate(tokens):
        cat["tokens"][position, list(ids)] = True
    num = {"ones": (np.ones(length, dtype=np.int64), np.ones(length, dtype=np.int64))}
    allowed = np.ones((length, length), dtype=bool)  # [query, key]
    if program.causal:
        allowed = np.tril(allowed)
    for module in program.modules:
        if isinstance(module, CatAttention | NumAttention):
            may_select = _may_select(module, cat, allowed, found)
            if isinstance(module, CatAttention):
                value = cat[module.value]
                # the value of any key it may select, or BOS's (its default) unless a match
                # is certain
                default = ~_always_selects(module, cat, allowed)[:, None] & value[:1]
                cat[module.name] = (may_select.astype(np.int64) @ value > 0) | default
            else:
                low, high = num[module.value]
                selected = may_select.astype(np.int64)
                num[module.name] = (selected @ np.minimum(low, 0), selected @ np.maximum(high, 0))
        else:
            cat[module.name] = _mlp(module, cat, num, found)
    return cat, num


def _wants(module: CatAttention | NumAttention, d_var: int) -> np.ndarray:
    """``[query value, key value]`` bool: the predicate as a matrix."""
    wants = np.zeros((d_var, d_var), dtype=bool)
    for q in range(len(module.predicate)):
        wants[q, matched_keys(module, q, d_var)] = True
    return wants


def _may_select(
    module: CatAttention | NumAttention, cat: dict, allowed: np.ndarray, found: Reach
) -> np.ndarray:
    """``[query, key]`` bool: some query value at i wants some key value at j, j allowed.
    Records in ``found`` which query values may see which key values."""
    query, key = cat[module.query], cat[module.key]
    wants = _wants(module, query.shape[1])
    meets = (query.T.astype(np.int64) @ allowed @ key.astype(np.int64)) > 0  # [d_var, d_var]
    found.meets[module.name] = found.meets.get(module.name, False) | meets
    wanted = (query.astype(np.int64) @ wants) > 0  # [query, key value]
    return ((wanted.astype(np.int64) @ key.T) > 0) & allowed


def _always_selects(module: CatAttention, cat: dict, allowed: np.ndarray) -> np.ndarray:
    """``[query]`` bool: some allowed key always holds a value every possible query value
    wants, so the head never falls back to BOS."""
    query, key = cat[module.query], cat[module.key]
    unwanted = ~_wants(module, query.shape[1])
    # [query, key value]: some query value possible at i refuses the key value
    refused = (query.astype(np.int64) @ unwanted.astype(np.int64)) > 0
    fixed = key.sum(1) == 1  # [key]: positions whose key holds one known value
    certain = allowed & fixed[None, :] & ~refused[:, key.argmax(1)]  # [query, key]
    return certain.any(1)


def _mlp(module: CatMLP | NumMLP, cat: dict, num: dict, found: Reach) -> np.ndarray:
    """The MLP's possible outputs per position, ``[length, d_var]``; records its pairs."""
    table = np.array(module.table, dtype=np.int64)
    reached = np.zeros(table.shape, dtype=bool)
    out = np.zeros((len(cat["tokens"]), cat["tokens"].shape[1]), dtype=bool)
    for p in range(len(out)):  # one position at a time: a numerical table can be large
        looked_up = _input_pairs(module, table.shape, cat, num, p)
        out[p, np.unique(table[looked_up])] = True
        reached |= looked_up
    found.pairs[module.name] = found.pairs.get(module.name, False) | reached
    return out


def _input_pairs(module: CatMLP | NumMLP, shape, cat: dict, num: dict, p: int) -> np.ndarray:
    """``[rows, columns]`` bool: the table entries position ``p`` may look up."""
    a_name, b_name = module.inputs
    lows = module.lows if isinstance(module, NumMLP) else (0, 0)
    rows = np.arange(shape[0]) + lows[0]  # the input value of each row
    cols = np.arange(shape[1]) + lows[1]
    if isinstance(module, CatMLP):
        a, b = cat[a_name][p], cat[b_name][p]
    else:
        # Numerical inputs are intervals; the table covers every value they can take
        # (ir.NumMLP), so they are clipped to it.
        (a_low, a_high), (b_low, b_high) = num[a_name], num[b_name]
        a = (a_low[p] <= rows) & (rows <= a_high[p])
        b = (b_low[p] <= cols) & (cols <= b_high[p])
    if a_name == b_name:  # one variable holds one value at a position: the diagonal
        return a[:, None] & np.equal.outer(rows, cols)
    return a[:, None] & b[None, :]
