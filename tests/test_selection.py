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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", range(1, 9))
def test_hard_attention_follows_the_closest_match_rule(n: int, causal: bool) -> None:
    k = max(n, 2)
    subsets = list(itertools.product([0, 1], repeat=n))  # every set of matching keys
    head = attention_selecting(n)
    for length in range(1, n + 1):
        keys = torch.tensor(subsets)  # [S, n]: 1 where the key matches
        batch = len(subsets)
        cat = torch.stack(
            [
                torch.nn.functional.one_hot(torch.zeros(batch, n, dtype=torch.long), k),
                torch.nn.functional.one_hot(keys, k),
                torch.nn.functional.one_hot(torch.arange(n).expand(batch, n), k),
            ],
        ).float()  # [3 variables, S, n, k]
        lengths = torch.full((batch,), length)
        selected = head([cat], allowed_keys(lengths, n, causal), None)[0].argmax(-1)  # [S, n]
        for s, subset in enumerate(subsets):
            matching = {j for j, bit in enumerate(subset) if bit}
            expected = [rule(i, matching, length, causal) for i in range(length)]
            assert selected[s, :length].tolist() == expected, (subset, length)


@pytest.mark.parametrize("n", range(1, 9))
def test_interpreter_rank_states_the_same_rule(n: int) -> None:
    rank = selection_rank(n)
    for i in range(n):
        order = sorted(range(n), key=lambda j, i=i: (j == i, abs(i - j), j))
        assert np.argsort(rank[i]).tolist() == order
