"""The interpreter's fast paths against plain statements of the same semantics.

`predict_ids` evaluates each distinct input once, selects keys through bitsets and a selection
table (contexts up to 16), and gathers classifier products from per-value tables. Each is
checked here against the direct version: every query against every key (`_DenseKeys`), every
row, and the classifier accumulated literally, one Python float at a time.
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_equivalence import random_key_map
from tprog import interpret, ir
from tprog.interpret import (
    _BitsetKeys,
    _DenseKeys,
    _distinct_rows,
    _evaluate,
    _products,
    evaluate,
    predict_ids,
    selection_table,
)

VOCAB = ("<pad>", "<s>", "a", "b", "c")


def random_program(rng: np.random.Generator, n_ctx: int, causal: bool) -> ir.Program:
    """Random modules of every kind over ``n_ctx`` positions, numerical tables covering the
    reachable range; predicates often want values that no key holds, or NEVER."""
    d_var = max(n_ctx, len(VOCAB)) + int(rng.integers(0, 3))
    cat, num = ["tokens", "positions"], {"ones": 1}  # num: name -> largest value
    variables = list(ir.INPUT_VARIABLES)
    modules: list[ir.Module] = []

    def pick(names):
        return names[int(rng.integers(len(names)))]

    def predicate():
        wanted = np.where(rng.random(d_var) < 0.1, ir.NEVER, rng.integers(0, d_var, d_var))
        return tuple(int(x) for x in wanted)

    def key_map():  # keys compared through a random map, or as they are
        return random_key_map(rng, d_var, 0.5)

    def table(rows, cols):
        return tuple(tuple(int(x) for x in row) for row in rng.integers(0, d_var, (rows, cols)))

    for layer in range(int(rng.integers(1, 4))):
        cat_now, num_now = list(cat), list(num)  # heads read earlier layers only
        for h in range(int(rng.integers(0, 4))):
            name = f"attn_{layer}_{h}_outputs"
            modules.append(
                ir.CatAttention(
                    name, pick(cat_now), pick(cat_now), pick(cat_now), predicate(), key_map()
                )
            )
            cat.append(name)
        for h in range(int(rng.integers(0, 4))):
            name = f"num_attn_{layer}_{h}_outputs"
            value = pick([u for u in num_now if num[u] * n_ctx <= 300] or ["ones"])
            modules.append(
                ir.NumAttention(name, pick(cat_now), pick(cat_now), value, predicate(), key_map())
            )
            num[name] = num[value] * n_ctx
        for m in range(int(rng.integers(0, 3))):
            name = f"mlp_{layer}_{m}_outputs"
            modules.append(ir.CatMLP(name, (pick(cat), pick(cat)), table(d_var, d_var)))
            cat.append(name)
        for m in range(int(rng.integers(0, 2))):
            name = f"num_mlp_{layer}_{m}_outputs"
            a, b = pick(list(num)), pick(list(num))
            modules.append(ir.NumMLP(name, (a, b), (0, 0), table(num[a] + 1, num[b] + 1)))
            cat.append(name)
    variables += [
        ir.Variable(m.name, "numerical" if m.name in num else "categorical") for m in modules
    ]
    return ir.Program(
        "random", VOCAB, n_ctx, d_var, causal, tuple(variables), tuple(modules),
        random_classifier(rng, variables, d_var), None,
    )  # fmt: skip


def random_classifier(rng, variables, d_var: int) -> ir.Classifier:
    n_labels = int(rng.integers(2, 7))

    def weights(*shape):  # exact ties (dyadic values) mixed with arbitrary floats
        ties = rng.choice([0.0, -0.0, 0.5, -0.5, 1.0, 0.1, 0.3], size=shape)
        return np.where(rng.random(shape) < 0.5, ties, rng.normal(size=shape) * 1e3).tolist()

    terms = [v.name for v in variables]
    rng.shuffle(terms)
    return ir.Classifier(
        labels=tuple(f"l{i}" for i in range(n_labels)),
        masked=tuple(bool(m) for m in rng.random(n_labels) < 0.3),
        terms=tuple(terms),
        categorical={
            v.name: tuple(map(tuple, weights(d_var, n_labels)))
            for v in variables
            if v.kind == "categorical"
        },
        numerical={v.name: tuple(weights(n_labels)) for v in variables if v.kind == "numerical"},
    )


def random_inputs(rng: np.random.Generator, n_ctx: int, batch: int):
    """Rows drawn with repetition from a few distinct ones; some padding holds junk ids."""
    pool = max(1, batch // 3)
    lengths = rng.integers(1, n_ctx + 1, pool)
    ids = rng.integers(1, len(VOCAB), (pool, n_ctx))
    padding = np.arange(n_ctx)[None] >= lengths[:, None]
    ids[padding & (rng.random((pool, n_ctx)) < 0.8)] = 0
    rows = rng.integers(0, pool, batch)
    return ids[rows], lengths[rows]


def literal_predictions(program: ir.Program, env: dict[str, np.ndarray]) -> np.ndarray:
    """DESIGN.md's classifier, one position and one Python float at a time."""
    clf = program.classifier
    batch, n = env["tokens"].shape
    out = np.empty((batch, n), dtype=np.int64)
    for b in range(batch):
        for i in range(n):
            logits = [0.0] * len(clf.labels)
            for name in clf.terms:
                x = int(env[name][b, i])
                for c in range(len(logits)):
                    if name in clf.categorical:
                        logits[c] += clf.categorical[name][x][c]
                    else:
                        logits[c] += clf.numerical[name][c] * x
            logits = [-math.inf if m else v for v, m in zip(logits, clf.masked, strict=True)]
            out[b, i] = max(range(len(logits)), key=lambda c: (logits[c], -c))
    return out


def dense_env(program: ir.Program, ids: np.ndarray, lengths: np.ndarray):
    return _evaluate(program, ids, _DenseKeys(lengths, ids.shape[1], program.causal))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 16), st.booleans(), st.integers(1, 40))
def test_bitset_attention_equals_every_query_against_every_key(seed, n_ctx, causal, batch):
    rng = np.random.default_rng(seed)
    program = random_program(rng, n_ctx, causal)
    ids, lengths = random_inputs(rng, n_ctx, batch)
    fast = _evaluate(program, ids, _BitsetKeys(lengths, n_ctx, causal))
    slow = dense_env(program, ids, lengths)
    assert fast.keys() == slow.keys()
    for name, values in slow.items():
        assert fast[name].dtype == np.int64, name
        np.testing.assert_array_equal(fast[name], values, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.booleans(), st.integers(1, 30))
def test_predict_ids_equals_the_literal_classifier_on_every_row(seed, n_ctx, causal, batch):
    rng = np.random.default_rng(seed)
    program = random_program(rng, n_ctx, causal)
    ids, lengths = random_inputs(rng, n_ctx, batch)
    expected = literal_predictions(program, dense_env(program, ids, lengths))
    np.testing.assert_array_equal(predict_ids(program, ids, lengths), expected)
    with mock.patch.object(interpret, "_CHUNK", 2):  # several chunks of distinct rows
        np.testing.assert_array_equal(predict_ids(program, ids, lengths), expected)


def test_long_contexts_compare_every_query_with_every_key() -> None:
    rng = np.random.default_rng(0)
    program = random_program(rng, 20, causal=False)
    ids, lengths = random_inputs(rng, 20, 12)
    expected = literal_predictions(program, dense_env(program, ids, lengths))
    np.testing.assert_array_equal(predict_ids(program, ids, lengths), expected)


def rule(i: int, keys: int, n: int) -> int:
    """DESIGN.md: the closest member of ``keys`` to i, any other before i itself, the earlier
    at equal distance; 0 (BOS) when there is none."""
    members = [j for j in range(n) if keys >> j & 1]
    return min(members, key=lambda j: (j == i, abs(i - j), j)) if members else 0


@pytest.mark.parametrize("n", range(1, 11))
def test_selection_table_states_the_rule_for_every_set(n: int) -> None:
    table = selection_table(n)
    for i in range(n):
        assert table[i].tolist() == [rule(i, keys, n) for keys in range(2**n)]


def test_selection_table_at_the_longest_bitset_context() -> None:
    n = interpret._MAX_BITSET_CONTEXT
    table = selection_table(n)
    for keys in np.random.default_rng(0).integers(0, 2**n, 500).tolist():
        assert table[:, keys].tolist() == [rule(i, keys, n) for i in range(n)]


@pytest.mark.parametrize("largest", [7, 2**40])  # one int64 key per row, or the rows' bytes
def test_distinct_rows_round_trip(largest: int) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, (50, 6)) * (largest // 2)
    lengths = rng.integers(1, 3, 50)
    first, inverse = _distinct_rows(ids, lengths)
    np.testing.assert_array_equal(ids[first][inverse], ids)
    np.testing.assert_array_equal(lengths[first][inverse], lengths)
    distinct = {(*row, length) for row, length in zip(ids[first], lengths[first], strict=True)}
    assert len(distinct) == len(first)


def test_no_inputs() -> None:
    program = random_program(np.random.default_rng(0), 4, causal=False)
    ids, lengths = np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    assert predict_ids(program, ids, lengths).shape == (0, 4)


@pytest.mark.parametrize("low", [0, 3, 1000])  # products gathered per value, or multiplied
def test_products_are_the_same_bits_either_way(low: int) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=5) * 1e3
    values = rng.integers(low, low + 50, (4, 3))
    got = _products(weights, values, np.empty((4, 3, 5)))
    expected = [[[w * int(x) for w in weights] for x in row] for row in values]
    assert got.tobytes() == np.array(expected).tobytes()


def test_numerical_mlp_outside_its_table_is_a_bounds_bug() -> None:
    rng = np.random.default_rng(3)
    program = random_program(rng, 4, causal=False)
    mlp = ir.NumMLP("num_mlp_9_0", ("ones", "ones"), (2, 0), ((1,),))
    broken = ir.Program(
        program.task, program.vocab, program.n_ctx, program.d_var, program.causal,
        (*program.variables, ir.Variable(mlp.name, "categorical")), (*program.modules, mlp),
        program.classifier,
    )  # fmt: skip
    with pytest.raises(ValueError, match="bounds bug"):
        evaluate(broken, np.ones((1, 4), dtype=np.int64), np.array([4]))


@pytest.mark.parametrize("token", [-1, len(VOCAB)])  # -1 would index tables from the end
def test_token_ids_outside_the_vocabulary_are_refused(token: int) -> None:
    program = random_program(np.random.default_rng(5), 4, causal=False)
    with pytest.raises(IndexError, match="vocabulary"):
        predict_ids(program, np.array([[1, 2, token, 0]]), np.array([3]))


def test_numerical_mlp_tables_convert_the_rectangle_batches_reach() -> None:
    rng = np.random.default_rng(0)
    table = tuple(tuple(int(x) for x in row) for row in rng.integers(0, 9, (30, 20)))
    lazy = interpret._LazyTable(table)
    for top, left in [(10, 5), (12, 6), (0, 15), (25, 0)]:  # inside, then growing each way
        rows, cols = rng.integers(top, top + 5, 40), rng.integers(left, left + 5, 40)
        reach = (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max()))
        np.testing.assert_array_equal(lazy.lookup(rows, cols, reach), np.array(table)[rows, cols])
    assert lazy.block.shape == (30, 20)
