"""Batched numpy evaluator of an IR `Program`: the reference semantics of DESIGN.md.

Everything is computed on integer arrays over a whole batch at once (``[B, n]`` per variable),
so faithfulness checks and evaluation cost milliseconds. The selection rule is implemented here
directly from its statement, not through the position bias the model uses, so comparing the two
is a real test.

Attention has two implementations with one meaning. Up to ``n = 16`` positions (every RASP and
Dyck task) the keys a query may select are a bitset ``[B, n]`` (bit ``j`` = key position ``j``),
and choosing among them is one lookup in a table built from the rule (`selection_table`). Longer
contexts compare every query with every key (``[B, n, n]`` booleans). `tests/test_interpret.py`
checks that the two agree, and that `predict_ids` (which evaluates each distinct input once)
agrees with evaluating every row and a literal, one-float-at-a-time classifier.

Speed never changes a bit: the classifier still adds its float64 terms one variable at a time,
in ``terms`` order, from 0.0; only how each term is fetched changed (a gather from a per-value
table, computed with the same operations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from tprog.ir import CatAttention, CatMLP, NumAttention, NumMLP, Program
from tprog.vocab import encode_batch

# Distinct inputs per chunk: bounds the per-chunk variables (and the [chunk, n, n] matches of
# long contexts).
_CHUNK = 4096
# Longest context whose key sets are bitsets; the selection table is [n, 2**n] int8 (1 MiB at 16).
_MAX_BITSET_CONTEXT = 16

# Numpy versions of IR tables (nested tuples), built once per table: keyed by what was built and
# the table's identity, holding the table so that the identity stays valid.
_CACHE: dict[tuple[str, int], tuple[tuple, Any]] = {}
_MAX_CACHED = 1024


def _cached(kind: str, table: tuple, build: Callable[[tuple], Any]) -> Any:
    hit = _CACHE.get((kind, id(table)))
    if hit is None or hit[0] is not table:
        if len(_CACHE) >= _MAX_CACHED:
            _CACHE.clear()
        hit = _CACHE[kind, id(table)] = (table, build(table))
    return hit[1]


def _array(table: tuple, dtype: type[np.number] = np.int64) -> np.ndarray:
    return _cached(dtype.__name__, table, lambda t: np.asarray(t, dtype=dtype))


def _gather(
    table: np.ndarray, index: np.ndarray, axis: int = 0, out: np.ndarray | None = None
) -> np.ndarray:
    """``np.take(table, index, axis)`` that refuses an index outside the table.

    numpy's own check (mode ``raise``) costs more than the gather itself; `_check_within` costs a
    fraction. Gathers whose indices are in range by construction call ``take`` with ``clip``.
    """
    _check_within(index, table.shape[axis])
    return np.take(table, index, axis=axis, out=out, mode="clip")


def _check_within(index: np.ndarray, size: int) -> None:
    """Refuse an int64 ``index`` outside ``0..size-1``, in one pass: read as unsigned, negative
    values are huge."""
    if index.size and index.view(np.uint64).max() >= size:
        raise IndexError(f"a variable's value is outside 0..{size - 1}, its table's rows")


Reach = tuple[int, int, int, int]  # the smallest and largest row, then column, of a rectangle


def _union(a: Reach, b: Reach) -> Reach:
    """The smallest rectangle covering both."""
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


class _LazyTable:
    """A numerical MLP's table, converted to numpy only over the rectangle of entries that
    batches have reached so far.

    Its domain grows by a factor ``n`` per layer of heads summing heads (the sort program's last
    tables have 513 x 513 entries, of which inputs reach about 26 x 26): converting one whole
    costs more time and memory than evaluating a batch.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...]) -> None:
        self.table = table
        self.shape = (len(table), len(table[0]))
        self.reach: Reach | None = None  # the converted rectangle
        self.block = np.empty((0, 0), dtype=np.int64)  # the table over `reach`

    def lookup(self, rows: np.ndarray, cols: np.ndarray, reach: Reach) -> np.ndarray:
        """``table[rows, cols]``, where ``reach`` bounds ``rows`` and ``cols`` within the table."""
        if self.reach is not None:  # keep what was converted before
            reach = _union(reach, self.reach)
        if reach != self.reach:
            top, bottom, left, right = reach
            cut = [row[left : right + 1] for row in self.table[top : bottom + 1]]
            self.reach, self.block = reach, np.array(cut, dtype=np.int64)
        top, _, left, _ = self.reach
        flat = (rows - top) * self.block.shape[1] + (cols - left)
        return self.block.ravel().take(flat, mode="clip")  # in range


@lru_cache(maxsize=64)
def selection_rank(n: int) -> np.ndarray:
    """``rank[i, j]``: how strongly query ``i`` prefers key ``j`` among matches (0 = most).

    The rule: closest to ``i`` first, any other position before ``i`` itself, and at equal
    distance the earlier position.
    """
    rank = np.empty((n, n), dtype=np.int64)
    for i in range(n):
        order = sorted(range(n), key=lambda j, i=i: (j == i, abs(i - j), j))
        rank[i, order] = np.arange(n)
    rank.setflags(write=False)
    return rank


@lru_cache(maxsize=_MAX_BITSET_CONTEXT + 1)
def selection_table(n: int) -> np.ndarray:
    """``table[i, keys]``: the position query ``i`` selects from the bitset ``keys`` of
    matching positions, the one of lowest `selection_rank`; 0 (BOS) when ``keys`` is empty.
    ``[n, 2**n] int8``."""
    rank = selection_rank(n)
    table = np.zeros((n, 2**n), dtype=np.int8)
    for j in range(n):
        # The sets whose highest member is j: j, unless the rest (a set below 2**j, already
        # filled) is not empty and its choice ranks better.
        rest = table[:, : 2**j]  # [n, 2**j]
        rest_wins = (np.arange(2**j) > 0) & (
            np.take_along_axis(rank, rest, axis=1) < rank[:, j : j + 1]
        )
        table[:, 2**j : 2 ** (j + 1)] = np.where(rest_wins, rest, j)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=_MAX_BITSET_CONTEXT + 1)
def _set_sizes(n: int) -> np.ndarray:
    """``sizes[keys]``: the number of members of each bitset of ``n`` positions."""
    sizes = np.zeros(2**n, dtype=np.int64)
    for j in range(n):
        sizes[2**j : 2 ** (j + 1)] = sizes[: 2**j] + 1
    sizes.setflags(write=False)
    return sizes


def allowed_keys(lengths: np.ndarray, n: int, causal: bool) -> np.ndarray:
    """``allowed[b, i, j]``: key ``j`` is a real token (and ``j <= i`` when causal)."""
    positions = np.arange(n)
    allowed = np.broadcast_to(
        positions[None, None, :] < lengths[:, None, None], (len(lengths), n, n)
    )
    if causal:
        allowed = allowed & (positions[None, :, None] >= positions[None, None, :])
    return allowed


def _select_closest(matches: np.ndarray) -> np.ndarray:
    """Index of the selected key per query ``[B, n]``; 0 (BOS) where nothing matches."""
    n = matches.shape[-1]
    score = np.where(matches, selection_rank(n)[None], n)  # non-matches rank last
    best = score.argmin(-1)
    return np.where(matches.any(-1), best, 0)


Attention = CatAttention | NumAttention
Env = dict[str, np.ndarray]


def compared_keys(module: Attention, env: Env) -> np.ndarray:
    """``[B, n]``: what each key is compared as, its value or, with a ``key_map``, its image."""
    key = env[module.key]
    return key if module.key_map is None else _gather(_array(module.key_map), key)


class _DenseKeys:
    """Attention over any context: every query against every key, ``[B, n, n]`` booleans."""

    def __init__(self, lengths: np.ndarray, n: int, causal: bool) -> None:
        self.allowed = allowed_keys(lengths, n, causal)

    def matches(self, module: Attention, env: Env) -> np.ndarray:
        wanted = _array(module.predicate)[env[module.query]]  # [B, n]: the key value i matches
        keys = compared_keys(module, env)
        return (keys[:, None, :] == wanted[:, :, None]) & self.allowed  # [B, n, n]

    def aggregate(self, module: CatAttention, env: Env) -> np.ndarray:
        selected = _select_closest(self.matches(module, env))
        return np.take_along_axis(env[module.value], selected, axis=1)

    def aggregate_sum(self, module: NumAttention, env: Env) -> np.ndarray:
        return np.einsum("bij,bj->bi", self.matches(module, env), env[module.value])


class _BitsetKeys:
    """Attention over up to 16 positions, without ``[B, n, n]`` arrays: the keys query ``i``
    may select are a bitset ``[B, n] int64`` (bit ``j`` = key position ``j``).

    Per key variable, ``sets[b, v]`` is the bitset of the real positions of row ``b`` whose key
    is ``v``, shared by every head reading that key; a query looks up the set of the value its
    predicate wants and keeps the keys it may see (``j <= i`` when causal). Per-row tables are
    flat (row-major) and read with row offsets, which is cheaper than ``take_along_axis``.
    """

    def __init__(self, lengths: np.ndarray, n: int, causal: bool) -> None:
        positions = np.arange(n)
        self.n = n
        self.rows = np.arange(len(lengths))[:, None]  # [B, 1]
        self.real = positions < lengths[:, None]  # [B, n]: key j is a real token
        # [B, n]: bit j of each real key. Float64, as bincount weights: sums of distinct powers
        # of two below 2**16 are exact.
        self.key_bits = np.where(self.real, 2.0**positions, 0.0)
        self.visible = (2 << positions) - 1 if causal else None  # [n]: keys j <= i
        # (key variable, key_map) -> its per-(row, key value) bitsets, see `matches`
        self.sets: dict[tuple[str, tuple[int, ...] | None], tuple[np.ndarray, int]] = {}

    def _cells(self, key: np.ndarray) -> tuple[np.ndarray, int]:
        """Each key's cell ``b * V + key[b, j]`` ``[B, n]`` in a flat per-(row, key value) table
        of ``V`` columns: one per value up to the largest key, and a last one for the values
        that no key holds."""
        n_columns = int(key.max(initial=0)) + 2
        return key + self.rows * n_columns, n_columns

    def _wanted(self, table: np.ndarray, n_columns: int, module: Attention, env: Env) -> np.ndarray:
        """``table[b, predicate[query[b, i]]]`` ``[B, n]``: each query's entry of a flat
        per-(row, key value) table (see `_cells`)."""
        predicate = _array(module.predicate)
        column = np.where((predicate >= 0) & (predicate < n_columns), predicate, n_columns - 1)
        wanted = _gather(column, env[module.query])  # [B, n]
        return table.take(wanted + self.rows * n_columns, mode="clip")  # in range

    def matches(self, module: Attention, env: Env) -> np.ndarray:
        """``[B, n]``: the bitset of keys that query ``i`` may select."""
        compared = module.key, module.key_map
        if compared not in self.sets:
            cells, n_columns = self._cells(compared_keys(module, env))
            size = self.rows.size * n_columns
            bits = np.bincount(cells.ravel(), self.key_bits.ravel(), minlength=size)
            self.sets[compared] = bits.astype(np.int64), n_columns
        found = self._wanted(*self.sets[compared], module, env)
        return found if self.visible is None else found & self.visible

    def aggregate(self, module: CatAttention, env: Env) -> np.ndarray:
        """``value[b, selected key]``: one lookup in the selection table per query."""
        n = self.n
        query_rows = np.arange(n) << n  # [n]: query i's row of the flat [n, 2**n] table
        table = selection_table(n).ravel()
        selected = table.take(self.matches(module, env) + query_rows, mode="clip")  # in range
        return env[module.value].ravel().take(selected + self.rows * n, mode="clip")

    def aggregate_sum(self, module: NumAttention, env: Env) -> np.ndarray:
        """The sum of ``value`` over the keys query ``i`` may select (exact integers: the order
        of addition is free)."""
        if module.value == "ones":  # a count (RASP's selector width): the size of each set
            return _set_sizes(self.n).take(self.matches(module, env), mode="clip")
        value = env[module.value]
        if self.visible is None:  # every query sees every key: total the values per key value
            cells, n_columns = self._cells(compared_keys(module, env))
            sums = np.zeros(self.rows.size * n_columns, dtype=np.int64)
            np.add.at(sums, cells[self.real], value[self.real])
            return self._wanted(sums, n_columns, module, env)
        matches = self.matches(module, env)
        out = np.zeros(matches.shape, dtype=np.int64)
        for j in range(self.n):
            out += ((matches >> j) & 1) * value[:, j, None]
        return out


def _cat_mlp(module: CatMLP, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    table = _array(module.table)
    _check_within(a, table.shape[0])
    _check_within(b, table.shape[1])
    return table.ravel().take(a * table.shape[1] + b, mode="clip")


def _num_mlp(module: NumMLP, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    table = _cached("lazy", module.table, _LazyTable)
    rows, cols = a - module.lows[0], b - module.lows[1]
    reach = tuple(int(f(x, initial=0)) for x in (rows, cols) for f in (np.min, np.max))
    row_lo, row_hi, col_lo, col_hi = reach
    if min(row_lo, col_lo) < 0 or row_hi >= table.shape[0] or col_hi >= table.shape[1]:
        raise ValueError(f"{module.name}: input outside the table's domain (a bounds bug)")
    return table.lookup(rows, cols, reach)


def evaluate(program: Program, ids: np.ndarray, lengths: np.ndarray) -> Env:
    """All variables of ``program`` on a batch: name -> ``[B, n] int64``."""
    n = ids.shape[1]
    if ids.size and (ids.min() < 0 or ids.max() >= len(program.vocab)):
        raise IndexError(f"token ids must lie in 0..{len(program.vocab) - 1}, the vocabulary")
    keys = _BitsetKeys if n <= _MAX_BITSET_CONTEXT else _DenseKeys
    return _evaluate(program, ids, keys(lengths, n, program.causal))


def _evaluate(program: Program, ids: np.ndarray, keys: _BitsetKeys | _DenseKeys) -> Env:
    batch, n = ids.shape
    env: Env = {
        "tokens": ids.astype(np.int64),
        "positions": np.broadcast_to(np.arange(n, dtype=np.int64), (batch, n)),
        "ones": np.ones((batch, n), dtype=np.int64),
    }
    for module in program.modules:
        if isinstance(module, CatAttention):
            env[module.name] = keys.aggregate(module, env)
        elif isinstance(module, NumAttention):
            env[module.name] = keys.aggregate_sum(module, env)
        elif isinstance(module, CatMLP):
            env[module.name] = _cat_mlp(module, *(env[name] for name in module.inputs))
        elif isinstance(module, NumMLP):
            env[module.name] = _num_mlp(module, *(env[name] for name in module.inputs))
        else:  # pragma: no cover - the IR loader rejects unknown kinds
            raise TypeError(f"unknown module {module!r}")
    return env


def classifier_logits(program: Program, env: Env) -> np.ndarray:
    """``[B, n, n_labels] float64`` logits, accumulated term by term in ``terms`` order."""
    clf = program.classifier
    batch, n = env["tokens"].shape
    logits = np.zeros((batch, n, len(clf.labels)), dtype=np.float64)
    term = np.empty_like(logits)  # reused: each gather or product lands here, then adds in place
    for name in clf.terms:
        if name in clf.categorical:
            _gather(_array(clf.categorical[name], np.float64), env[name], out=term)
        else:
            _products(_array(clf.numerical[name], np.float64), env[name], out=term)
        logits += term
    logits[..., np.asarray(clf.masked, dtype=bool)] = -np.inf
    return logits


def _products(weights: np.ndarray, values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``weights * values[..., None]`` ``[B, n, C]`` in float64, into ``out``.

    Numerical variables span few integers (counts, sums of counts), so each product is computed
    once per integer and gathered: broadcasting a ``C``-wide row over every position runs numpy's
    inner loop ``C`` elements at a time, several times slower. Same products, same bits.
    """
    low, high = int(values.min(initial=0)), int(values.max(initial=0))
    if high - low >= values.size:  # more integers than positions: multiply directly
        return np.multiply(weights, values.astype(np.float64)[..., None], out=out)
    products = np.multiply.outer(np.arange(low, high + 1).astype(np.float64), weights)
    return np.take(products, values - low, axis=0, out=out, mode="clip")  # in range


def _distinct_rows(ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)``: a row index per distinct ``(length, ids)`` input, and for every
    input the index of its own in ``first``, so that ``ids == ids[first][inverse]``."""
    rows = np.column_stack([lengths, ids]).astype(np.int64)  # [B, n + 1]
    base = int(rows.max(initial=0)) + 1
    if rows.min(initial=0) >= 0 and base ** rows.shape[1] <= 2**63:
        keys = rows @ base ** np.arange(rows.shape[1])  # [B]: the row as one base-`base` number
    else:  # too wide for one int64: compare the rows' bytes
        keys = rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1])))[:, 0]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def predict_ids(program: Program, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Predicted label ids ``[B, n]`` (argmax, ties to the lowest label index).

    Each distinct input is evaluated once: datasets of short sequences repeat many.
    """
    first, inverse = _distinct_rows(ids, lengths)
    ids, lengths = ids[first], lengths[first]
    out = np.empty(ids.shape, dtype=np.int64)
    for start in range(0, len(ids), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        env = evaluate(program, ids[chunk], lengths[chunk])
        out[chunk] = classifier_logits(program, env).argmax(-1)
    return out[inverse]


def run_program(program: Program, sequences: Sequence[Sequence[str]]) -> list[list[str]]:
    """Label strings per input position, for each of ``sequences``."""
    ids, lengths = encode_batch(sequences, program.vocab, program.n_ctx, program.unk)
    predicted = predict_ids(program, ids, lengths)
    labels = program.classifier.labels
    return [
        [labels[c] for c in row[:length]] for row, length in zip(predicted, lengths, strict=True)
    ]
