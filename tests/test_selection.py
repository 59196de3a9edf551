"""The closest-match rule, exhaustively: every query position x every set of matching keys.

The hard model implements the rule with a fixed position bias under argmax; here the rule is
stated directly, and the model's categorical attention must select exactly what it says.
"""

import itertools

import numpy as np
import pytest
import torch

from tprog.interpret import selection_rank
from tprog.model.layers import CatAttention
from tprog.model.program import allowed_keys
from tprog.model.sampling import Sampling


def rule(i: int, matching: set[int], length: int, causal: bool) -> int:
    """DESIGN.md: closest candidate to i, any other before i itself, earlier on ties; else 0."""
    candidates = [j for j in matching if j < length and (j <= i or not causal)]
    if not candidates:
        return 0
    return min(candidates, key=lambda j: (j == i, abs(i - j), j))


def attention_selecting(n: int) -> CatAttention:
    """One head reading query <- var 0, key <- var 1, value <- var 2, predicate 0 -> 1."""
    k = max(n, 2)
    head = CatAttention(1, 3, k, n, torch.Generator().manual_seed(0))
    with torch.no_grad():
        head.read.logits.copy_(torch.eye(3) * 10)
        head.predicate[0, 0].copy_(torch.nn.functional.one_hot(torch.tensor(1), k) * 10.0)
    return head


def every_matching_set(n: int) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Every set of matching keys, and the stream that makes it: the query reads 0, the key 1
    where it matches, and the value is the key's position. -> [3 variables, S, n, k]"""
    k = max(n, 2)
    subsets = list(itertools.product([0, 1], repeat=n))
    keys = torch.tensor(subsets)  # [S, n]: 1 where the key matches
    batch = len(subsets)
    cat = torch.stack(
        [
            torch.nn.functional.one_hot(torch.zeros(batch, n, dtype=torch.long), k),
            torch.nn.functional.one_hot(keys, k),
            torch.nn.functional.one_hot(torch.arange(n).expand(batch, n), k),
        ],
    ).float()
    return subsets, cat


def expected_selection(subset: tuple[int, ...], length: int, causal: bool) -> list[int]:
    matching = {j for j, bit in enumerate(subset) if bit}
    return [rule(i, matching, length, causal) for i in range(length)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", range(1, 9))
def test_hard_attention_follows_the_closest_match_rule(n: int, causal: bool) -> None:
    subsets, cat = every_matching_set(n)
    head = attention_selecting(n)
    for length in range(1, n + 1):
        lengths = torch.full((len(subsets),), length)
        selected = head([cat], allowed_keys(lengths, n, causal), None)[0].argmax(-1)  # [S, n]
        for s, subset in enumerate(subsets):
            assert selected[s, :length].tolist() == expected_selection(subset, length, causal)


def test_soft_attention_without_noise_keeps_the_rule_and_with_noise_does_not() -> None:
    """Without noise (train.refine_noise=false) and at a low temperature, the soft head attends
    where the hard head does, even among several matching keys; Gumbel noise on the scores
    drowns the position bias that orders them."""
    n = 8
    subsets, cat = every_matching_set(n)
    head = attention_selecting(n)
    with torch.no_grad():  # parameters decided beyond any Gumbel draw
        head.read.logits.mul_(100)
        head.predicate.mul_(100)
    lengths = torch.full((len(subsets),), n)
    allowed = allowed_keys(lengths, n, False)
    expected = torch.tensor([expected_selection(subset, n, False) for subset in subsets])
    hard = head([cat], allowed, None)[0]
    assert torch.equal(hard.argmax(-1), expected)
    for noise, agreement in ((False, 1.0), (True, 0.5)):
        sampling = Sampling(1e-3, torch.Generator().manual_seed(0), noise=noise)
        soft = head([cat], allowed, sampling)[0]  # [S, n, k]: the value, a relaxed position
        same = (soft.argmax(-1) == expected).float().mean().item()
        if noise:
            assert same < agreement  # several matches: a random one of them
        else:
            assert same == agreement
            assert torch.allclose(soft, hard, atol=1e-6)


@pytest.mark.parametrize("n", range(1, 9))
def test_interpreter_rank_states_the_same_rule(n: int) -> None:
    rank = selection_rank(n)
    for i in range(n):
        order = sorted(range(n), key=lambda j, i=i: (j == i, abs(i - j), j))
        assert np.argsort(rank[i]).tolist() == order
