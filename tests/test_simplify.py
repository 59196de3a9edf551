"""Simplification passes: known results on hand-built programs, and outputs preserved on the
basis for random programs after every pass."""

from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, given, settings

from tests.test_equivalence import LABELS, VOCAB, random_inputs, random_models
from tests.test_induction_circuit import induction_program
from tprog import ir, tables
from tprog.data import build_dataset
from tprog.extract import model_to_ir
from tprog.interpret import predict_ids
from tprog.simplify import (
    PASSES,
    Basis,
    _fill,
    fold_constants,
    readable_predicates,
    remove_dead_modules,
    restrict_to_reachable,
    simplify,
)
from tprog.tasks import get_task, task_config


def _basis(ids: np.ndarray, lengths: np.ndarray) -> Basis:
    return Basis(ids, lengths, f"{len(ids)} test inputs")


def _same_outputs(a: ir.Program, b: ir.Program, basis: Basis) -> bool:
    real = np.arange(basis.ids.shape[1])[None] < basis.lengths[:, None]
    return np.array_equal(
        predict_ids(a, basis.ids, basis.lengths)[real],
        predict_ids(b, basis.ids, basis.lengths)[real],
    )


def _induction():
    config = task_config("induction", {"data.size": 600})
    dataset = build_dataset(get_task("induction"), config)
    k = config.data.max_length
    program = induction_program(dataset.vocab.tokens, dataset.labels.tokens, k)
    split = dataset.train
    return program, _basis(split.ids, split.lengths), dataset


def _with_silent_head(program: ir.Program) -> ir.Program:
    """``program`` plus a head no module reads and whose classifier rows are all zero."""
    name = "attn_1_1"
    head = ir.CatAttention(name, "positions", "positions", "tokens", tuple(range(program.d_var)))
    clf = program.classifier
    silent = tuple(tuple(0.0 for _ in clf.labels) for _ in range(program.d_var))
    return replace(
        program,
        variables=(*program.variables, ir.Variable(name, "categorical", "token")),
        modules=(*program.modules, head),
        classifier=replace(
            clf, terms=(*clf.terms, name), categorical={**clf.categorical, name: silent}
        ),
    )


def test_dead_head_and_silent_input_terms_are_removed() -> None:
    program, basis, _ = _induction()
    simplified = remove_dead_modules(_with_silent_head(program), basis)
    assert [m.name for m in simplified.modules] == ["attn_0_0", "attn_1_0"]
    # Inputs stay variables; their all-zero terms go. attn_0_0 is read by attn_1_0: it stays,
    # though its own term is silent and goes.
    assert "tokens" in {v.name for v in simplified.variables}
    assert simplified.classifier.terms == ("attn_1_0",)
    assert _same_outputs(simplified, program, basis)


def test_a_head_that_changes_predictions_stays() -> None:
    program, basis, _ = _induction()
    simplified = remove_dead_modules(program, basis)
    assert "attn_1_0" in simplified.classifier.terms
    assert len(simplified.modules) == 2


def test_predicates_become_their_simplest_exact_form() -> None:
    program, basis, dataset = _induction()
    simplified = readable_predicates(program, basis)
    previous_token, same_letter = (m.predicate for m in simplified.modules)
    # q -> q - 1, and 0 -> k - 1, which causal attention never sees: exactly k == q - 1
    assert previous_token == (ir.NEVER, *range(program.n_ctx - 1))
    # letters match the same letter; other tokens ask for <pad>, which no key holds. Not
    # k == q: a BOS query would then meet the BOS that the previous-token head copies at 0.
    vocab = dataset.vocab.tokens
    letters = {"a", "b", "c", "d"}
    assert same_letter == tuple(
        v if vocab[v] in letters else ir.NEVER for v in range(program.d_var)
    )
    assert _same_outputs(simplified, program, basis)


def test_a_predicate_without_a_simple_form_keeps_its_rows_that_select_something() -> None:
    program, basis, _ = _induction()
    head = program.modules[0]
    odd = ir.CatAttention(
        head.name, head.query, head.key, head.value, (1, 0, 3, 0) + (2,) * (program.d_var - 4)
    )
    program = replace(program, modules=(odd, program.modules[1]))
    simplified = readable_predicates(program, basis)
    # causal: query position 0 never sees key 1, 1 sees 0, 2 sees 3 only later: never
    assert simplified.modules[0].predicate[:4] == (ir.NEVER, 0, ir.NEVER, 0)
    assert _same_outputs(simplified, program, basis)


def test_reachable_values_are_recorded() -> None:
    program, basis, _ = _induction()
    simplified = restrict_to_reachable(program, basis)
    tokens = simplified.variable("tokens")
    assert tokens.values is not None and 0 not in tokens.values  # <pad> is never a real token
    assert simplified.variable("positions").values == tuple(range(program.n_ctx))
    assert _same_outputs(simplified, program, basis)


def _counting_program(table_width: int) -> ir.Program:
    """Counts 'a' tokens and feeds the count (twice) to a numerical MLP with a wide table."""
    vocab, labels, k = ("<pad>", "<s>", "a", "b"), ("<pad>", "x", "y"), 4
    a = vocab.index("a")
    count = ir.NumAttention("num_attn_0_0", "tokens", "tokens", "ones", (a,) * k)
    # output 1 when the count is even, else 2; the table spans 0..table_width-1 for both inputs
    table = tuple(tuple(1 + (x % 2) for _ in range(table_width)) for x in range(table_width))
    mlp = ir.NumMLP("num_mlp_0_0", ("num_attn_0_0",) * 2, (0, 0), table)
    names = ("tokens", "positions", "ones", "num_attn_0_0", "num_mlp_0_0")
    zero_rows = tuple(tuple(0.0 for _ in labels) for _ in range(k))
    mlp_rows = tuple(tuple(float(c == v) for c in range(len(labels))) for v in range(k))
    return ir.Program(
        task="count",
        vocab=vocab,
        n_ctx=k,
        d_var=k,
        causal=False,
        variables=(
            *ir.INPUT_VARIABLES,
            ir.Variable("num_attn_0_0", "numerical"),
            ir.Variable("num_mlp_0_0", "categorical"),
        ),
        modules=(count, mlp),
        classifier=ir.Classifier(
            labels=labels,
            masked=(True, False, False),
            terms=names,
            categorical={
                "tokens": zero_rows,
                "positions": zero_rows,
                "num_mlp_0_0": mlp_rows,
            },
            numerical={"ones": (0.0, 0.0, 0.0), "num_attn_0_0": (0.0, 0.0, 0.0)},
        ),
    )


def test_numerical_table_entries_that_never_occur_take_the_default() -> None:
    program = _counting_program(table_width=20)
    # inputs "<s> a", "<s> a a", "<s> b a a": the count of a's is 1, 2 or 2
    ids = np.array([[1, 2, 0, 0], [1, 2, 2, 0], [1, 3, 2, 2]])
    basis = _basis(ids, np.array([2, 3, 4]))
    simplified = restrict_to_reachable(program, basis)
    table = simplified.modules[1].table
    # (1, 1) -> 2 and (2, 2) -> 1 occur (1 wins the tie for default); nothing else does
    exceptions = {(a, b) for a, row in enumerate(table) for b, out in enumerate(row) if out != 1}
    assert exceptions == {(1, 1)} and table[1][1] == 2
    assert simplified.variable("num_attn_0_0").values == (1, 2)
    assert _same_outputs(simplified, program, basis)


def _with_constant_mlp(program: ir.Program, row: tuple[float, ...]) -> ir.Program:
    """``program`` plus an MLP that outputs 3 whatever it reads, whose classifier row at 3 is
    ``row``: a per-label bias in disguise."""
    name, k = "mlp_1_0", program.d_var
    mlp = ir.CatMLP(name, ("tokens", "positions"), tuple((3,) * k for _ in range(k)))
    clf = program.classifier
    rows = tuple(row if value == 3 else tuple(9.0 for _ in row) for value in range(k))
    return replace(
        program,
        variables=(*program.variables, ir.Variable(name, "categorical")),
        modules=(*program.modules, mlp),
        classifier=replace(
            clf, terms=(*clf.terms, name), categorical={**clf.categorical, name: rows}
        ),
    )


def test_a_constant_module_folds_into_the_bias_and_goes() -> None:
    program, basis, _ = _induction()
    labels = program.classifier.labels
    # A bias that favours '<unk>' a little: where the circuit copies a number it still wins.
    row = tuple(0.5 if label == "<unk>" else 0.0 for label in labels)
    with_constant = _with_constant_mlp(program, row)
    folded = fold_constants(with_constant, basis)
    assert "mlp_1_0" not in folded.classifier.terms
    assert folded.classifier.numerical["ones"] == row  # 0.0 + row, exactly
    assert _same_outputs(folded, with_constant, basis)
    simplified = remove_dead_modules(folded, basis)
    assert [m.name for m in simplified.modules] == ["attn_0_0", "attn_1_0"]
    assert _same_outputs(simplified, with_constant, basis)


def test_a_module_that_varies_is_not_folded() -> None:
    program, basis, _ = _induction()
    assert fold_constants(program, basis).classifier == program.classifier


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(random_models())
def test_every_pass_preserves_outputs_on_its_basis(drawn) -> None:
    model, seed = drawn
    program = model_to_ir(model, task="random", vocab=VOCAB, labels=LABELS)
    rng = np.random.default_rng(seed)
    # Silence a random half of the classifier so that some modules become removable.
    clf = program.classifier
    silenced = {name for name in clf.terms if rng.random() < 0.5}
    program = replace(
        program,
        classifier=replace(
            clf,
            categorical={
                k: tuple(tuple(0.0 for _ in row) for row in v) if k in silenced else v
                for k, v in clf.categorical.items()
            },
            numerical={
                k: tuple(0.0 for _ in v) if k in silenced else v for k, v in clf.numerical.items()
            },
        ),
    )
    basis = _basis(*random_inputs(rng, model.shape.n_ctx, 200))
    current = program
    for simplification in PASSES:
        current = simplification(current, basis)
        assert _same_outputs(current, program, basis), simplification.__name__
        assert ir.Program.from_json(current.to_json()) == current
    assert simplify(program, basis).meta["simplified_on"] == basis.description
    assert len(current.modules) <= len(program.modules)


def test_entries_never_reached_take_the_default_of_their_row_when_rows_decide() -> None:
    # Reached: rows 0..3 at columns 0..2; row a gives a % 3, but for (1, 2) -> 0. The rest of
    # the 4 x 6 table is noise no input reaches.
    rng = np.random.default_rng(0)
    table = [[int(x) for x in row] for row in rng.integers(0, 6, (4, 6))]
    pairs = {(a, b) for a in range(4) for b in range(3)}
    for a, b in pairs:
        table[a][b] = 0 if (a, b) == (1, 2) else a % 3
    filled = _fill(tuple(map(tuple, table)), pairs, (0, 0))
    assert all(filled[a][b] == table[a][b] for a, b in pairs)  # what is reached is kept
    assert [row[3:] for row in filled] == [(a % 3,) * 3 for a in range(4)]  # rows decide
    used = [(a, b, filled[a][b]) for a, b in pairs]
    assert tables.listed(used, 0) == 3  # defaults for rows 1 and 2, and the one exception
    assert tables.listed(used, None) == tables.listed(used, 1) == 5
    # Leaving out column 2 (where (1, 2) -> 0 sits), the reached entries are rows' alone.
    assert tables.special_values(used, 0) == [2] and tables.special_values(used, 1) == []
    # When no layout lists fewer items than one default, that is the layout.
    assert _fill(((1, 2), (2, 1)), {(0, 0), (1, 1)}, (0, 0)) == ((1, 1), (1, 1))
