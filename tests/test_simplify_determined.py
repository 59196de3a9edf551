"""`fold_determined`: variables that are functions of earlier ones are read through them, on
hand-built programs over reverse's whole domain, and on random programs over theirs."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from tests.test_equivalence import LABELS, VOCAB, random_models
from tests.test_reverse_circuit import reverse_on_its_domain
from tprog import ir
from tprog.codegen import program_to_python
from tprog.extract import model_to_ir
from tprog.interpret import evaluate, predict_ids
from tprog.simplify import PASSES, Basis, readable_predicates, remove_dead_modules, simplify
from tprog.simplify_determined import fold_determined, function_of


@pytest.fixture(scope="module")
def reverse():
    """The hand-written reverse program and reverse's whole domain (19,530 inputs)."""
    program, domain = reverse_on_its_domain()
    assert program.d_var == 8  # the relabellings below are written for 8 values
    return program, domain


def _with(program: ir.Program, *added: tuple[ir.Module, str, tuple | None]) -> ir.Program:
    """``program`` plus modules appended in order, each with its variable's kind and its
    classifier rows (None: no term)."""
    variables, modules, clf = list(program.variables), list(program.modules), program.classifier
    for module, kind, rows in added:
        variables.append(ir.Variable(module.name, kind))
        modules.append(module)
        if rows is not None:
            table = "categorical" if kind == "categorical" else "numerical"
            clf = replace(
                clf,
                terms=(*clf.terms, module.name),
                **{table: {**getattr(clf, table), module.name: rows}},
            )
    return replace(program, variables=tuple(variables), modules=tuple(modules), classifier=clf)


def _position_mlp(program: ir.Program, name: str, of_position) -> ir.CatMLP:
    """An MLP of (positions, positions) whose output is ``of_position(a)``: a relabelled
    position, as trained programs have."""
    k = program.d_var
    return ir.CatMLP(
        name, ("positions", "positions"), tuple((of_position(a),) * k for a in range(k))
    )


def _bias(program: ir.Program, label: str, weight: float) -> tuple[tuple[float, ...], ...]:
    """Classifier rows that add ``weight`` to ``label`` for odd values: too little to change
    a prediction of the reverse program (its copied label scores 1.0)."""
    labels = program.classifier.labels
    return tuple(
        tuple(weight if (value % 2 and name == label) else 0.0 for name in labels)
        for value in range(program.d_var)
    )


def _unchanged(before: ir.Program, after: ir.Program, basis: Basis) -> None:
    """Every variable of ``after`` holds what it held in ``before`` at every real position,
    and every prediction is the same."""
    real = np.arange(basis.ids.shape[1])[None] < basis.lengths[:, None]
    old, new = (evaluate(p, basis.ids, basis.lengths) for p in (before, after))
    for name in new:
        assert np.array_equal(old[name][real], new[name][real]), name
    assert np.array_equal(
        predict_ids(before, basis.ids, basis.lengths)[real],
        predict_ids(after, basis.ids, basis.lengths)[real],
    )


def test_a_relabelled_position_read_as_query_and_by_the_classifier_goes(reverse) -> None:
    program, basis = reverse
    half = _position_mlp(program, "mlp_1_0", lambda a: a // 2)
    k = program.d_var
    # selects the key at position 2 * (i // 2): the even position at or before the query
    head = ir.CatAttention(
        "attn_2_0",
        "mlp_1_0",
        "positions",
        "tokens",
        tuple(2 * x if 2 * x < k else ir.NEVER for x in range(k)),
    )
    mlp_rows = _bias(program, "1", 0.25)
    built = _with(program, (half, "categorical", mlp_rows), (head, "categorical", None))

    folded = fold_determined(built, basis)
    _unchanged(built, folded, basis)
    head = folded.modules[-1]
    assert (head.query, head.key) == ("positions", "positions")
    positions = range(basis.ids.shape[1])
    assert [head.predicate[i] for i in positions] == [2 * (i // 2) for i in positions]
    clf = folded.classifier
    assert "mlp_1_0" not in clf.terms and not ir.is_read(folded, "mlp_1_0")
    # positions' rows gain the MLP's row of what each position is relabelled to (0.0 + w)
    assert clf.categorical["positions"][3] == mlp_rows[1]
    assert clf.categorical["positions"][4] == mlp_rows[2]
    assert clf.terms.index("positions") < clf.terms.index("attn_0_0")  # creation order kept

    simplified = simplify(built, basis)
    assert "mlp_1_0" not in {m.name for m in simplified.modules}
    assert "mlp_1_0" in {m.name for m in remove_dead_modules(built, basis).modules}


def test_a_key_relabelled_one_to_one_is_read_through_a_rewritten_predicate(reverse) -> None:
    program, basis = reverse
    relabelled = _position_mlp(program, "mlp_1_0", lambda a: (a + 1) % 8)
    head = ir.CatAttention("attn_2_0", "positions", "mlp_1_0", "tokens", tuple(range(8)))
    built = _with(program, (relabelled, "categorical", None), (head, "categorical", None))
    folded = fold_determined(built, basis)
    _unchanged(built, folded, basis)
    assert not ir.is_read(folded, "mlp_1_0")
    # k == f(q) over relabelled keys: the key position whose label is q
    assert folded.modules[-1].key == "positions"
    assert folded.modules[-1].predicate[3] == 2
    assert folded.modules[-1].key_map is None


def test_a_key_relabelled_many_to_one_is_read_through_a_key_map(reverse) -> None:
    program, basis = reverse
    half = _position_mlp(program, "mlp_1_0", lambda a: a // 2)
    head = ir.NumAttention("num_attn_2_0", "positions", "mlp_1_0", "ones", tuple(range(8)))
    built = _with(program, (half, "categorical", None), (head, "numerical", None))
    folded = fold_determined(built, basis)
    _unchanged(built, folded, basis)
    assert not ir.is_read(folded, "mlp_1_0")
    head = folded.modules[-1]
    assert (head.key, head.key_map) == ("positions", tuple(a // 2 for a in range(8)))
    assert ir.matched_keys(head, 3, 8) == [6, 7]  # query 3 counts the keys at 6 and 7
    source, _ = program_to_python(folded)
    assert "    return k_position in {0: {0, 1}, 1: {2, 3}, 2: {4, 5}, 3: {6, 7}}" in source


def test_a_key_map_goes_where_each_query_meets_one_of_its_keys(reverse) -> None:
    """<pad> (0) is compared as '0' (3), but no real key holds it: a plain predicate is exact."""
    program, basis = reverse
    head = ir.NumAttention(
        "num_attn_2_0", "positions", "tokens", "ones", tuple(range(8)), (3, *range(1, 8))
    )
    built = _with(program, (head, "numerical", None))
    readable = readable_predicates(built, basis)
    _unchanged(built, readable, basis)
    assert readable.modules[-1].key_map is None
    assert readable.modules[-1].predicate[3] == 3


@pytest.mark.parametrize(
    ("of_position", "folds"), [(lambda a: a, True), (lambda a: min(a, 2), False)]
)
def test_a_value_is_read_through_only_an_identity(reverse, of_position, folds) -> None:
    program, basis = reverse
    copy = _position_mlp(program, "mlp_1_0", of_position)
    head = ir.CatAttention("attn_2_0", "positions", "positions", "mlp_1_0", tuple(range(8)))
    built = _with(program, (copy, "categorical", None), (head, "categorical", None))
    folded = fold_determined(built, basis)
    _unchanged(built, folded, basis)
    assert ir.is_read(folded, "mlp_1_0") is not folds


def test_a_numerical_variable_read_only_by_the_classifier_moves_onto_its_source(reverse) -> None:
    program, basis = reverse
    k = program.d_var
    # counts keys at position i - 1: 0 at <s>, 1 everywhere else, i.e. a function of tokens
    previous = ir.NumAttention(
        "num_attn_1_0", "positions", "positions", "ones", (ir.NEVER, *range(k - 1))
    )
    row = tuple(0.5 if label == "1" else 0.0 for label in program.classifier.labels)
    built = _with(program, (previous, "numerical", row))
    folded = fold_determined(built, basis)
    _unchanged(built, folded, basis)
    clf = folded.classifier
    assert "num_attn_1_0" not in clf.terms
    start = program.vocab.index("<s>")
    assert clf.categorical["tokens"][start] == program.classifier.categorical["tokens"][start]
    assert clf.categorical["tokens"][program.vocab.index("3")] == row  # 0.0 + 0.5 * 1


def test_nothing_folds_beyond_a_whole_domain(reverse) -> None:
    program, basis = reverse
    relabelled = _position_mlp(program, "mlp_1_0", lambda a: a // 2)
    built = _with(program, (relabelled, "categorical", _bias(program, "1", 0.25)))
    sample = replace(basis, whole_domain=False)
    assert fold_determined(built, sample) is built
    assert "mlp_1_0" not in fold_determined(built, basis).classifier.terms


def test_function_of() -> None:
    source = np.array([0, 1, 1, 3, 3, 0], dtype=np.uint8)
    assert function_of(source, np.array([5, 7, 7, 5, 5, 5])) == {0: 5, 1: 7, 3: 5}
    assert function_of(source, np.array([5, 7, 6, 5, 5, 5])) is None
    assert function_of(source[:0], source[:0]) == {}


def _whole_domain(n_ctx: int) -> Basis:
    """Every input `random_inputs` can draw at this context: <s> then 0..n_ctx-1 tokens."""
    rows = [
        (1, *rest)
        for length in range(1, n_ctx + 1)
        for rest in itertools.product(range(1, len(VOCAB)), repeat=length - 1)
    ]
    ids = np.zeros((len(rows), n_ctx), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    lengths = np.array([len(row) for row in rows])
    return Basis(ids, lengths, f"all {len(rows)} inputs", whole_domain=True)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(random_models())
def test_random_programs_keep_every_variable_on_their_whole_domain(drawn) -> None:
    model, _ = drawn
    program = model_to_ir(model, task="random", vocab=VOCAB, labels=LABELS)
    basis = _whole_domain(model.shape.n_ctx)
    folded = fold_determined(program, basis)
    _unchanged(program, folded, basis)
    current = program
    for simplification in PASSES:
        current = simplification(current, basis)
    real = np.arange(basis.ids.shape[1])[None] < basis.lengths[:, None]
    assert np.array_equal(
        predict_ids(current, basis.ids, basis.lengths)[real],
        predict_ids(program, basis.ids, basis.lengths)[real],
    )
