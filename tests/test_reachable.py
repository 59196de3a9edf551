"""`tprog.reachable`: what any input can reach contains what every input does reach (random
programs, every input enumerated); known results on hand-built programs; and what it means for
simplification beyond its basis."""

import itertools
from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, given, settings

from tests.test_equivalence import LABELS, VOCAB, random_models, with_random_key_maps
from tprog import ir
from tprog.decompile import _beyond_basis_sentence
from tprog.extract import model_to_ir
from tprog.interpret import evaluate, predict_ids
from tprog.reachable import any_tokens, reach
from tprog.simplify import (
    Basis,
    _meets,
    fold_constants,
    readable_predicates,
    restrict_to_reachable,
    rewrites_beyond_basis,
)
from tprog.tasks import get_task, task_config


def every_input(n_ctx: int, longest: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Every input of 1 to min(n_ctx, longest) non-padding tokens of VOCAB, 0-padded to
    n_ctx."""
    rows = [
        row
        for length in range(1, min(n_ctx, longest) + 1)
        for row in itertools.product(range(1, len(VOCAB)), repeat=length)
    ]
    ids = np.zeros((len(rows), n_ctx), dtype=np.int64)
    for number, row in enumerate(rows):
        ids[number, : len(row)] = row
    return ids, np.array([len(row) for row in rows])


def random_program(drawn) -> ir.Program:
    """A random model's program, some of its heads comparing keys through a key_map."""
    model, seed = drawn
    program = model_to_ir(model, task="random", vocab=VOCAB, labels=LABELS)
    return with_random_key_maps(program, np.random.default_rng(seed))


SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(random_models())
def test_what_any_input_reaches_contains_what_every_input_reaches(drawn) -> None:
    program = random_program(drawn)
    ids, lengths = every_input(program.n_ctx)
    env = evaluate(program, ids, lengths)
    real = np.arange(program.n_ctx)[None] < lengths[:, None]
    found = reach(program, any_tokens(program))
    for var in program.variables:
        assert set(env[var.name][real].tolist()) <= set(found.values[var.name]), var.name
    everything = Basis(ids, lengths, "every input", whole_domain=True)
    for module in program.modules:
        if isinstance(module, ir.CatAttention | ir.NumAttention):
            exact = _meets([module], env, everything, program)[module.name]
            assert not (exact & ~found.meets[module.name]).any(), module.name
        else:
            a, b = (env[name][real] for name in module.inputs)
            lows = module.lows if isinstance(module, ir.NumMLP) else (0, 0)
            assert found.pairs[module.name][a - lows[0], b - lows[1]].all(), module.name


@SETTINGS
@given(random_models())
def test_a_program_differs_from_its_simplification_only_where_rewrites_may_be_reached(
    drawn,
) -> None:
    """Simplified on a few inputs, then every rewrite `rewrites_beyond_basis` does not count put
    back as it was: the result equals the original on every input."""
    program = random_program(drawn)
    ids, lengths = every_input(program.n_ctx)
    rng = np.random.default_rng(0)
    few = rng.choice(len(ids), size=min(30, len(ids)), replace=False)
    basis = Basis(ids[few], lengths[few], "30 inputs")
    simplified = readable_predicates(restrict_to_reachable(program, basis), basis)
    found = reach(program, any_tokens(program))
    counted = rewrites_beyond_basis(program, simplified, found)
    original = {module.name: module for module in program.modules}

    def counted_only(module):
        before = original[module.name]
        if isinstance(module, ir.CatAttention | ir.NumAttention):
            meets = found.meets[module.name]
            if module.key_map != before.key_map:  # no row alone can go back: all of them
                matched = [
                    [set(ir.matched_keys(head, q, len(meets))) for head in (before, module)]
                    for q in range(len(meets))
                ]
                counted_rows = any(
                    old != new and any(meets[q, k] for k in old | new)
                    for q, (old, new) in enumerate(matched)
                )
                return before if counted_rows else module
            rows = [
                old
                if old != new and any(meets[q, t] for t in (old, new) if 0 <= t < len(meets))
                else new
                for q, (old, new) in enumerate(zip(before.predicate, module.predicate, strict=True))
            ]
            return replace(module, predicate=tuple(rows))
        table = np.where(found.pairs[module.name], before.table, module.table)
        return replace(module, table=tuple(map(tuple, table.tolist())))

    # Rewrites that no input reaches, kept; those that one may, undone.
    patched = replace(simplified, modules=tuple(map(counted_only, simplified.modules)))
    real = np.arange(program.n_ctx)[None] < lengths[:, None]
    expected = predict_ids(program, ids, lengths)[real]
    assert np.array_equal(predict_ids(patched, ids, lengths)[real], expected)
    if counted == {"table_entries": 0, "predicate_rows": 0}:
        assert np.array_equal(predict_ids(simplified, ids, lengths)[real], expected)


def _first_token_program() -> ir.Program:
    """Head ``attn_0_0`` copies the token at position 0, whatever the query; MLP ``mlp_0_0``
    reads it with ``tokens``; head ``attn_0_1`` copies the token at position 1."""
    d_var, n_ctx = 5, 4
    vocab = ("<pad>", "<s>", "a", "b", "</s>")
    identity = tuple(tuple(range(d_var)) for _ in range(d_var))
    modules = (
        ir.CatAttention("attn_0_0", "positions", "positions", "tokens", (0,) * d_var),
        ir.CatAttention("attn_0_1", "positions", "positions", "tokens", (1,) * d_var),
        ir.CatMLP("mlp_0_0", ("attn_0_0", "tokens"), identity),
    )
    variables = (
        *ir.INPUT_VARIABLES,
        ir.Variable("attn_0_0", "categorical", "token"),
        ir.Variable("attn_0_1", "categorical", "token"),
        ir.Variable("mlp_0_0", "categorical"),
    )
    rows = tuple(tuple(float(v == label) for label in range(3)) for v in range(d_var))
    classifier = ir.Classifier(
        labels=("<pad>", "x", "y"),
        masked=(True, False, False),
        terms=("tokens", "attn_0_1"),
        categorical={"tokens": rows, "attn_0_1": rows},
        numerical={"ones": (0.0, 0.0, 0.0)},
    )
    return ir.Program("framed", vocab, n_ctx, d_var, False, variables, modules, classifier)


# Inputs "<s> x </s>" with x one or two of a, b: per length, the token ids each position holds.
FRAMED = {3: [[1], [2, 3], [4]], 4: [[1], [2, 3], [2, 3], [4]]}


def test_known_reach_of_heads_that_copy_fixed_positions() -> None:
    found = reach(_first_token_program(), FRAMED)
    assert found.values["attn_0_0"] == (1,)  # position 0 always holds <s>
    assert found.values["attn_0_1"] == (2, 3)
    assert found.values["positions"] == (0, 1, 2, 3)
    # mlp_0_0 looks up (<s>, token) only, for the tokens some position holds
    assert sorted(map(tuple, np.argwhere(found.pairs["mlp_0_0"]).tolist())) == [
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
    ]
    # every position (its query) may see the key at position 1; there is no position 4
    assert found.meets["attn_0_1"][:, 1].tolist() == [True, True, True, True, False]
    # Without the domain's token sets, any token may be at position 1 (BOS's <s> included)
    assert reach(_first_token_program(), any_tokens(_first_token_program())).values["attn_0_1"] == (
        1,
        2,
        3,
        4,
    )


def test_a_variable_constant_on_the_basis_alone_is_not_folded() -> None:
    """attn_0_1 is 'a' on every basis input, but other inputs put 'b' at position 1."""
    program = _first_token_program()
    ids = np.array([[1, 2, 4, 0], [1, 2, 2, 4]])
    lengths = np.array([3, 4])
    on_data = fold_constants(program, Basis(ids, lengths, "2 inputs", whole_domain=True))
    assert "attn_0_1" not in on_data.classifier.terms  # folded into the bias
    beyond = fold_constants(program, Basis(ids, lengths, "2 inputs", token_sets=FRAMED))
    assert beyond.classifier == program.classifier


def test_framed_domains_give_the_tokens_of_each_position() -> None:
    config = task_config("sort", {"data.max_length": 4})
    tokens = get_task("sort").input_domain(config.data).position_tokens()
    assert sorted(tokens) == [3, 4]
    assert tokens[3][0] == ("<s>",) and tokens[3][2] == ("</s>",)
    assert "</s>" not in tokens[4][2] and tokens[4][2] == tokens[4][1]


def test_the_header_says_where_beyond_its_basis_a_program_may_differ() -> None:
    program = _first_token_program()
    assert _beyond_basis_sentence(program) == ""  # simplified on its whole domain
    risky = {"table_entries": 1234, "predicate_rows": 2}
    text = _beyond_basis_sentence(replace(program, meta={"rewrites_beyond_basis": risky}))
    assert "module or classifier term it removed" in text
    assert "through the 1,234 table entries and 2 predicate rows it rewrote" in text
    safe = {"table_entries": 0, "predicate_rows": 0}
    text = _beyond_basis_sentence(replace(program, meta={"rewrites_beyond_basis": safe}))
    assert text.endswith("no table entry or predicate row it rewrote can be reached there.")
