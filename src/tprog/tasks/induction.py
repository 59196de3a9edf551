"""In-context learning (paper §4.1): the task an induction-head circuit solves.

Each sequence draws its own map letter -> number. The input is ``<s>`` and four (letter, number)
pairs; then either a stray number right after ``<s>`` or a final query letter, so every input has
10 tokens. At each letter the model must output the number that letter was paired with earlier in
the sequence, or ``<unk>`` (a real, predictable class) if the letter is new.

The input domain (`InductionInputs`) is every sequence the generator can produce: pairs that
agree with *some* map, i.e. a letter repeated within one sequence is always followed by the same
number. That is 133,760 inputs, few enough to verify a program on all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice, product

import numpy as np

from tprog.config import DataConfig
from tprog.tasks.domain import TokenRows
from tprog.tasks.registry import Example, register_task
from tprog.vocab import BOS, PAD, UNK

LETTERS = ("a", "b", "c", "d")
NUMBERS = ("0", "1", "2", "3")
N_PAIRS = 4
SEQ_LEN = 1 + 2 * N_PAIRS + 1  # <s>, the pairs, then one stray number or one query letter
INPUT_TOKENS = (BOS, *LETTERS, *NUMBERS)
LABELS = (UNK, *NUMBERS)


def induction_targets(tokens: Sequence[str]) -> list[str]:
    """Target per position of a whole input (``<s>`` included): at a letter, the number that
    followed its first earlier occurrence, else ``<unk>``; ``<pad>`` everywhere else."""
    seen: set[str] = set()
    paired: dict[str, str] = {}
    targets: list[str] = []
    for i, token in enumerate(tokens):
        if token in LETTERS:
            # A seen letter is always followed by its number in generated data; fall back to
            # <unk> for hand-written inputs where it is not.
            targets.append(paired.get(token, UNK) if token in seen else UNK)
            seen.add(token)
        else:
            targets.append(PAD)
            previous = tokens[i - 1] if i > 0 else None
            if token in NUMBERS and previous in LETTERS:
                paired.setdefault(previous, token)
    return targets


def generate(rng: np.random.Generator, data: DataConfig) -> Example:
    """One sequence; ``data`` is unused because length and vocabulary are fixed by the task."""
    del data
    mapping = rng.integers(0, len(NUMBERS), size=len(LETTERS))  # many-to-one allowed
    letters = rng.integers(0, len(LETTERS), size=N_PAIRS)
    tokens = [BOS]
    for letter in letters:
        tokens += [LETTERS[letter], NUMBERS[mapping[letter]]]
    if rng.random() < 0.5:
        tokens.insert(1, NUMBERS[rng.integers(0, len(NUMBERS))])
    else:
        tokens.append(LETTERS[rng.integers(0, len(LETTERS))])
    return tokens, induction_targets(tokens)


class InductionInputs:
    """Every input `generate` can produce, enumerated in token-index order, sampled uniformly."""

    def size(self) -> int:
        # Each run of letters allows one number per distinct letter; then one of 4 query
        # letters or one of 4 stray numbers.
        runs = product(LETTERS, repeat=N_PAIRS)
        maps = sum(len(NUMBERS) ** len(set(letters)) for letters in runs)
        return maps * (len(LETTERS) + len(NUMBERS))

    def chunks(self, rows: int) -> Iterator[TokenRows]:
        inputs = self._in_order()
        while chunk := list(islice(inputs, rows)):
            yield chunk

    def _in_order(self) -> Iterator[list[str]]:
        # Letters precede numbers in the vocabulary, so every input with a letter at position 1
        # (a final query) precedes every input with a stray number there.
        for pairs in _consistent_pairs({}, N_PAIRS):
            for query in LETTERS:
                yield [BOS, *pairs, query]
        for stray in NUMBERS:
            for pairs in _consistent_pairs({}, N_PAIRS):
                yield [BOS, stray, *pairs]

    def sample(self, rng: np.random.Generator, n: int) -> TokenRows:
        # A run of letters with probability proportional to the inputs it allows (4 ** distinct
        # letters), a uniform map, then a uniform query letter or stray number: every input of
        # the domain is equally likely.
        runs = list(product(range(len(LETTERS)), repeat=N_PAIRS))
        weights = np.array([float(len(NUMBERS) ** len(set(run))) for run in runs])
        picked = rng.choice(len(runs), size=n, p=weights / weights.sum())
        maps = rng.integers(0, len(NUMBERS), size=(n, len(LETTERS))).tolist()
        extras = rng.integers(0, len(LETTERS) + len(NUMBERS), size=n).tolist()
        out = []
        for run, mapping, extra in zip(picked.tolist(), maps, extras, strict=True):
            pairs = [token for i in runs[run] for token in (LETTERS[i], NUMBERS[mapping[i]])]
            if extra < len(LETTERS):
                out.append([BOS, *pairs, LETTERS[extra]])
            else:
                out.append([BOS, NUMBERS[extra - len(LETTERS)], *pairs])
        return out

    def targets(self, tokens: Sequence[str]) -> list[str]:
        return induction_targets(tokens)


def _consistent_pairs(mapping: dict[str, str], n_pairs: int) -> Iterator[list[str]]:
    """Every run of ``n_pairs`` (letter, number) pairs that agrees with ``mapping`` and with
    itself, in lexicographic order."""
    if n_pairs == 0:
        yield []
        return
    for letter in LETTERS:
        numbers = (mapping[letter],) if letter in mapping else NUMBERS
        for number in numbers:
            for rest in _consistent_pairs({**mapping, letter: number}, n_pairs - 1):
                yield [letter, number, *rest]


register_task(
    "induction",
    generate,
    input_tokens=list(INPUT_TOKENS),
    labels=list(LABELS),
    causal=True,
    defaults={
        "model.n_layers": 2,
        "model.n_heads_cat": 1,
        "model.n_heads_num": 0,
        "model.n_mlps_cat": 0,
        "model.n_mlps_num": 0,
        "data.max_length": SEQ_LEN,
        "data.vocab_size": len(INPUT_TOKENS) + 1,  # + <pad>
        "train.epochs": 500,  # the paper's induction script trains twice as long as RASP
    },
    summary="in-context learning: recall the number paired with a letter earlier (or <unk>)",
    domain=lambda data: InductionInputs(),  # fixed by the task: no data setting applies
)
