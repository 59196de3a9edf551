"""The central property: hard model == IR interpreter == generated code (its per-input `run` and
its numpy `run_batch`), on random models."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tprog.codegen import load_program_module, write_program
from tprog.extract import model_to_ir
from tprog.interpret import predict_ids
from tprog.ir import CatAttention, NumAttention, Program
from tprog.model.layout import Layout
from tprog.model.program import Shape, TransformerProgram
from tprog.model.sampling import Sampling

VOCAB = ("<pad>", "<s>", "a", "b", "c")
LABELS = ("<pad>", "w", "x", "y", "z")


def random_inputs(rng: np.random.Generator, n_ctx: int, batch: int):
    lengths = rng.integers(1, n_ctx + 1, batch)
    ids = rng.integers(1, len(VOCAB), (batch, n_ctx))
    ids[:, 0] = 1  # <s> first, as in every task
    ids[np.arange(n_ctx)[None] >= lengths[:, None]] = 0
    return ids, lengths


@st.composite
def random_models(draw):
    layout = Layout(
        n_layers=draw(st.integers(1, 3)),
        n_heads_cat=draw(st.integers(0, 2)),
        n_heads_num=draw(st.integers(0, 2)),
        n_mlps_cat=draw(st.integers(0, 2)),
        n_mlps_num=draw(st.integers(0, 2)),
    )
    n_ctx = draw(st.integers(2, 6))
    shape = Shape(
        layout,
        d_var=max(n_ctx, len(VOCAB)),
        n_ctx=n_ctx,
        d_mlp=8,
        n_labels=len(LABELS),
        causal=draw(st.booleans()),
    )
    seed = draw(st.integers(0, 2**31 - 1))
    # Random read, predicate, MLP and classifier logits: a fresh model is a random hard model.
    model = TransformerProgram(shape, [True] + [False] * 4, torch.Generator().manual_seed(seed))
    return model.eval(), seed


def random_key_map(rng: np.random.Generator, d_var: int, share: float) -> tuple[int, ...] | None:
    """With probability ``share``, a random ``key_map`` as simplification writes them (entry
    ``d_var`` matches no query); else None, keys compared as they are."""
    if rng.random() >= share:
        return None
    return tuple(int(v) for v in rng.integers(0, d_var + 1, d_var))


def with_random_key_maps(program: Program, rng: np.random.Generator) -> Program:
    """``program`` with about half of its heads comparing keys through a random ``key_map``."""
    modules = tuple(
        replace(module, key_map=random_key_map(rng, program.d_var, 0.5))
        if isinstance(module, CatAttention | NumAttention)
        else module
        for module in program.modules
    )
    return replace(program, modules=modules)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(random_models())
def test_hard_model_equals_interpreter_equals_generated_code(tmp_path: Path, drawn) -> None:
    model, seed = drawn
    program = model_to_ir(model, task="random", vocab=VOCAB, labels=LABELS)
    assert Program.from_json(program.to_json()) == program
    ids, lengths = random_inputs(np.random.default_rng(seed), model.shape.n_ctx, 300)
    expected = model.predict(torch.as_tensor(ids), torch.as_tensor(lengths)).numpy()
    from_ir = predict_ids(program, ids, lengths)
    path = tmp_path / f"program_{seed}.py"
    write_program(program, path)
    module = load_program_module(path)
    inputs = [[VOCAB[t] for t in ids[row, :n]] for row, n in enumerate(lengths.tolist())]
    batched = module.run_batch(inputs)
    for row, tokens in enumerate(inputs):
        want = [LABELS[c] for c in expected[row, : len(tokens)]]
        assert [LABELS[c] for c in from_ir[row, : len(tokens)]] == want
        assert module.run(tokens) == want
        assert batched[row] == want


@settings(max_examples=30, deadline=None)
@given(random_models())
def test_straight_through_forward_is_the_hard_model(drawn) -> None:
    """Refinement with train.refine_straight_through (and no noise) trains the program itself:
    the soft forward pass predicts what the hard model predicts, at any temperature, while
    gradients reach the discrete choices."""
    model, seed = drawn
    ids, lengths = (
        torch.as_tensor(a)
        for a in random_inputs(np.random.default_rng(seed), model.shape.n_ctx, 200)
    )
    expected = model.predict(ids, lengths)
    real = torch.arange(model.shape.n_ctx) < lengths[:, None]  # [B, N]
    for tau in (3.0, 0.01):
        sampling = Sampling(tau, torch.Generator(), noise=False, straight_through=True)
        logits = model(ids, lengths, sampling)  # [B, N, n_labels]
        assert torch.equal(logits.argmax(-1)[real], expected[real])
    model.zero_grad()
    logits = model(ids, lengths, Sampling(1.0, torch.Generator(), False, True))
    logits.logsumexp(-1).sum().backward()
    # reads of more than one variable and predicates: the discrete choices
    choices = [
        parameter.grad
        for name, parameter in model.named_parameters()
        if name.endswith(("logits", "predicate")) and parameter.shape[-1] > 1
    ]
    if choices:
        assert sum(grad.abs().sum() for grad in choices) > 0


@pytest.mark.parametrize("causal", [True, False])
def test_numerical_ranges_are_per_position_sums(causal: bool) -> None:
    """Each head sums the one before it over the keys it sees (counts, counts of counts, ...).
    A causal head at position i sees i + 1 keys, so its range is a sum along the sequence, the
    triangular then tetrahedral numbers, not n times the range before it; a non-causal head's
    is n times. The last layer's numerical MLP reads the two widest, and its table holds every
    value the hard model computes (the model raises otherwise)."""
    n = 4
    layout = Layout(n_layers=3, n_heads_cat=0, n_heads_num=1, n_mlps_cat=0, n_mlps_num=1)
    shape = Shape(layout, d_var=len(VOCAB), n_ctx=n, d_mlp=8, n_labels=len(LABELS), causal=causal)
    model = TransformerProgram(shape, [True] + [False] * 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            # Numerical variables: ones, then each layer's head. Layer l's head reads
            # variable l: ones for the first, the head before it for the others.
            _choose(block.num_attn.read_value.logits, [layer])
        _choose(model.blocks[-1].num_mlp.read.logits, [3, 2])
    triangular, tetrahedral = n * (n + 1) // 2, n * (n + 1) * (n + 2) // 6
    highs = [n, triangular, tetrahedral] if causal else [n, n**2, n**3]
    assert model.numerical_bounds() == [(1, 1), *((0, high) for high in highs)]
    ids, lengths = random_inputs(np.random.default_rng(0), n, 2000)
    model.eval().predict(torch.as_tensor(ids), torch.as_tensor(lengths))


def _choose(logits: torch.Tensor, options: list[int]) -> None:
    """Make row r of a read's logits choose ``options[r]``."""
    logits.fill_(-10.0)
    for row, option in enumerate(options):
        logits[row, option] = 10.0
