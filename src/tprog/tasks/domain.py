"""Input domains: every input a task's generator can produce, counted, enumerated and sampled.

A program that is right on the examples a generator happened to draw can still be wrong on inputs
nobody drew. A task that declares its domain lets `tprog.verify` check a program on *all* of
them, against targets computed by a pure function of the input (no RNG), or, when the domain is
too large to enumerate, on a sample drawn uniformly over the domain, which unlike the training
distribution does not over-represent short inputs.

Enumeration is shortest first, then lexicographic by token index, so the first failures found
are the shortest counterexamples; it streams in chunks, so a domain's size never decides memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tprog.config import DataConfig
from tprog.vocab import PAD

TokenRows = list[list[str]]


class InputDomain(Protocol):
    """The inputs of one task under one data config, and the ground truth for each.

    A domain may also have ``position_tokens()``: per input length, the tokens each position
    may hold (as `FramedStrings` has). Where a domain is too large to enumerate, it bounds what
    simplification may rewrite (`tprog.reachable`); without it, any token may be anywhere. And
    ``sample_skewed(rng, n)``: inputs of extreme composition, which simplification's basis then
    holds besides a uniform sample (`decompile.simplification_basis`).
    """

    def size(self) -> int:
        """How many distinct inputs the domain holds."""
        ...

    def chunks(self, rows: int) -> Iterator[TokenRows]:
        """Every input exactly once, at most ``rows`` per chunk: shortest first, then
        lexicographic by token index (the task's vocabulary order)."""
        ...

    def sample(self, rng: np.random.Generator, n: int) -> TokenRows:
        """``n`` inputs drawn independently and uniformly over the domain."""
        ...

    def targets(self, tokens: Sequence[str]) -> list[str]:
        """The targets of one input, ``<pad>`` where nothing is scored; a pure function."""
        ...


# What `register_task(domain=...)` takes: the domain of a data config.
DomainFactory = Callable[[DataConfig], InputDomain]


@dataclass(frozen=True)
class FramedStrings:
    """``prefix + x + suffix`` for every string ``x`` over ``symbols`` with a length in
    ``lengths``; the targets are ``<pad>`` on the frame and ``rule(x)`` on the content.

    The RASP tasks are of this form (``<s> x </s>`` or ``<s> x``). Lexicographic order is the
    order of ``symbols``, which for every built-in task is their vocabulary order.
    """

    symbols: tuple[str, ...]
    lengths: range
    rule: Callable[[Sequence[str]], list[str]]
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()

    def size(self) -> int:
        return sum(len(self.symbols) ** length for length in self.lengths)

    def chunks(self, rows: int) -> Iterator[TokenRows]:
        base = len(self.symbols)
        for length in self.lengths:
            count = base**length
            for start in range(0, count, rows):
                # Row r of the chunk is string number start + r written in base |symbols|,
                # most significant digit first: that numbering is the lexicographic order.
                index = np.arange(start, min(start + rows, count), dtype=np.int64)
                digits = np.stack(np.unravel_index(index, (base,) * length), axis=1)
                yield [self._framed_symbols(row) for row in digits.tolist()]

    def sample(self, rng: np.random.Generator, n: int) -> TokenRows:
        # A length with probability proportional to its number of strings, then uniform symbols:
        # every string of the domain is equally likely.
        lengths = self._draw_lengths(rng, n)
        digits = rng.integers(0, len(self.symbols), size=(n, max(self.lengths)))
        return [
            self._framed_symbols(row[:length])
            for row, length in zip(digits.tolist(), lengths.tolist(), strict=True)
        ]

    def sample_skewed(self, rng: np.random.Generator, n: int) -> TokenRows:
        """``n`` inputs of lengths drawn as `sample` draws them, each of whose symbols are drawn
        with frequencies of its own (uniform over the simplex): inputs of extreme composition
        (all but one symbol the same, say), which a uniform sample almost never holds."""
        lengths = self._draw_lengths(rng, n)
        frequencies = rng.dirichlet(np.ones(len(self.symbols)), size=n)  # [n, |symbols|]
        cumulative = frequencies.cumsum(1)[:, None, :-1]  # [n, 1, |symbols| - 1]
        draws = rng.random((n, max(self.lengths), 1))
        digits = (draws >= cumulative).sum(-1)  # [n, longest]: inverse-CDF sampling
        return [
            self._framed_symbols(row[:length])
            for row, length in zip(digits.tolist(), lengths.tolist(), strict=True)
        ]

    def _draw_lengths(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``[n]`` content lengths, each as likely as its share of the domain's strings."""
        weights = np.array([float(len(self.symbols)) ** k for k in self.lengths])
        return rng.choice(np.array(self.lengths), size=n, p=weights / weights.sum())

    def position_tokens(self) -> dict[int, list[tuple[str, ...]]]:
        """Per input length (frame included), the tokens each position may hold."""
        return {
            len(self.prefix) + length + len(self.suffix): [
                *((token,) for token in self.prefix),
                *[self.symbols] * length,
                *((token,) for token in self.suffix),
            ]
            for length in self.lengths
        }

    def targets(self, tokens: Sequence[str]) -> list[str]:
        return self.framed_targets(tokens[len(self.prefix) : len(tokens) - len(self.suffix)])

    def frame(self, content: Sequence[str]) -> list[str]:
        """The whole input around ``content``."""
        return [*self.prefix, *content, *self.suffix]

    def framed_targets(self, content: Sequence[str]) -> list[str]:
        """The targets of the whole input around ``content``."""
        return [PAD] * len(self.prefix) + self.rule(content) + [PAD] * len(self.suffix)

    def _framed_symbols(self, indices: list[int]) -> list[str]:
        return self.frame([self.symbols[i] for i in indices])
