"""Telling a run's stages apart in a test: which stage a call was made in, and how many Gumbel
draws each stage took."""

from collections import Counter
from typing import Any

import pytest

from tprog.model import sampling


def enter_on_call(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, stage: list[str], label: str
) -> None:
    """From the first call of ``owner.name`` on, ``stage[0]`` is ``label``: what runs before
    the stage's entry point belongs to the stage before it."""
    real = getattr(owner, name)

    def entered(*args):
        stage[0] = label
        return real(*args)

    monkeypatch.setattr(owner, name, entered)


def count_gumbel_draws(monkeypatch: pytest.MonkeyPatch, stage: list[str]) -> Counter:
    """Gumbel noise draws, counted by the stage (``stage[0]``) they were drawn in."""
    draws: Counter = Counter()
    real = sampling.with_gumbel_noise

    def counted(logits, how):
        draws[stage[0]] += 1
        return real(logits, how)

    monkeypatch.setattr(sampling, "with_gumbel_noise", counted)
    return draws
