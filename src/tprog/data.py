"""From a task to encoded train/val/test splits, following the paper protocol (TASKS.md).

Draw up to 5 x ``data.size`` examples with ``np.random.default_rng(seed)``, keep the first
occurrence of each distinct input, stop once ``data.size`` are kept (reverse and sort have fewer
distinct strings than that at V = N = 8: they keep what the draws give, a quirk of the paper),
shuffle once with the same generator and split 81 / 9 / 10. The same config and seed always give
the same splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tprog.config import DataConfig, RunConfig
from tprog.errors import ConfigError, InputError
from tprog.tasks.registry import Example, Task
from tprog.vocab import PAD, Vocab, encode_batch

DRAWS_PER_EXAMPLE = 5  # the paper draws at most 5 x size sequences before giving up
TEST_FRACTION = 0.1
VAL_FRACTION = 0.1  # of what remains after the test split: 9% overall


@dataclass(frozen=True)
class Split:
    inputs: list[list[str]]
    targets: list[list[str]]
    ids: np.ndarray  # [B, n_ctx] int64 input token ids, right-padded with 0 (= "<pad>")
    target_ids: np.ndarray  # [B, n_ctx] int64 label ids, 0 where the target is "<pad>"/padding
    lengths: np.ndarray  # [B] int64

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class Dataset:
    vocab: Vocab  # input tokens; "<pad>" is id 0
    labels: Vocab  # target labels; "<pad>" is label 0 (ignored by loss and accuracy)
    n_ctx: int
    train: Split
    val: Split
    test: Split


def build_dataset(task: Task, config: RunConfig) -> Dataset:
    """The task's examples under ``config``, encoded and split; deterministic in the seed."""
    data = config.data
    vocab = Vocab.build(task.vocab_tokens(data))
    labels = Vocab.build(task.label_tokens(data))
    rng = np.random.default_rng(config.seed)
    examples = draw_examples(task, data, rng)
    order = rng.permutation(len(examples))
    shuffled = [examples[i] for i in order]
    n_train, n_val, _ = split_sizes(task.name, len(shuffled))
    parts = (
        shuffled[:n_train],
        shuffled[n_train : n_train + n_val],
        shuffled[n_train + n_val :],
    )
    if data.balance_lengths:
        parts = (balanced_by_length(parts[0]), *parts[1:])
    train, val, test = (encode_split(part, vocab, labels, data.max_length) for part in parts)
    return Dataset(vocab, labels, data.max_length, train, val, test)


def balanced_by_length(examples: Sequence[Example]) -> list[Example]:
    """``examples`` with each one repeated so that every input length present holds about as
    many examples as the mean over those lengths, and never fewer than it had.

    The protocol keeps distinct inputs only, so short inputs are rare in it: reverse at
    V = N = 8 has 5 inputs with one symbol and 15,625 with six, and a model fitted to such
    data can be wrong on most short inputs while scoring 99.7% on its test split. Repeating
    them keeps every length in view of the loss. Repeats sit next to each other; training
    shuffles every epoch.
    """
    lengths = np.array([len(inputs) for inputs, _ in examples], dtype=np.int64)
    counts = np.bincount(lengths)
    mean = len(examples) / max(np.count_nonzero(counts), 1)
    repeats = np.maximum(1, np.rint(mean / np.maximum(counts, 1))).astype(np.int64)
    return [
        example for example, n in zip(examples, lengths, strict=True) for _ in range(repeats[n])
    ]


def split_sizes(task_name: str, n: int) -> tuple[int, int, int]:
    """``(train, val, test)``: test = round(10% of n), val = round(10% of the rest).

    At least one example goes to val and to test, so tiny smoke-test sizes still give three
    usable splits; from n = 15 on this never changes the paper's numbers."""
    if n < 3:
        raise ConfigError(
            f"task {task_name!r} produced only {n} distinct sequence(s); train, val and test "
            "need at least 3."
        )
    n_test = max(1, round(TEST_FRACTION * n))
    n_val = max(1, round(VAL_FRACTION * (n - n_test)))
    return n - n_test - n_val, n_val, n_test


def draw_examples(task: Task, data: DataConfig, rng: np.random.Generator) -> list[Example]:
    """Up to ``data.size`` examples with distinct inputs, first occurrence kept, validated."""
    check = _Validator(task, data)
    kept: dict[tuple[str, ...], Example] = {}
    for _ in range(DRAWS_PER_EXAMPLE * data.size):
        inputs, targets = check(task.generate(rng, data))
        key = tuple(inputs)
        if key not in kept:
            kept[key] = (inputs, targets)
            if len(kept) == data.size:
                break
    return list(kept.values())  # dicts keep insertion order: the draw order


class _Validator:
    """Checks what a (possibly user-written) generator returns, once per draw."""

    def __init__(self, task: Task, data: DataConfig) -> None:
        self.name = task.name
        self.max_length = data.max_length
        self.tokens = frozenset(task.vocab_tokens(data)) - {PAD}
        self.labels = frozenset(task.label_tokens(data)) | {PAD}

    def __call__(self, example: object) -> Example:
        try:
            raw_inputs, raw_targets = example  # type: ignore[misc]
            inputs, targets = list(raw_inputs), list(raw_targets)
        except (TypeError, ValueError):
            raise self._error("must return a pair (inputs, targets) of token lists") from None
        if len(inputs) != len(targets):
            raise self._error(
                f"returned {len(inputs)} input tokens but {len(targets)} targets; "
                "they must have equal length"
            )
        if not inputs:
            raise self._error("returned an empty input")
        if len(inputs) > self.max_length:
            raise self._error(
                f"returned an input of {len(inputs)} tokens, longer than "
                f"data.max_length={self.max_length}"
            )
        if not self.tokens.issuperset(inputs):
            bad = next(t for t in inputs if t not in self.tokens)
            raise self._error(f"returned the input token {bad!r}, which is not in its input_tokens")
        if not self.labels.issuperset(targets):
            bad = next(t for t in targets if t not in self.labels)
            raise self._error(f"returned the target {bad!r}, which is not in its labels")
        return inputs, targets

    def _error(self, problem: str) -> ConfigError:
        return ConfigError(f"the generator of task {self.name!r} {problem}.")


def encode_split(examples: Sequence[Example], vocab: Vocab, labels: Vocab, n_ctx: int) -> Split:
    """Token and label ids, right-padded with 0 to ``n_ctx`` columns."""
    inputs = [list(x) for x, _ in examples]
    targets = [list(y) for _, y in examples]
    ids = np.zeros((len(examples), n_ctx), dtype=np.int64)
    lengths = np.zeros(len(examples), dtype=np.int64)
    if examples:
        encoded, lengths = encode_batch(inputs, vocab.tokens, n_ctx)
        ids[:, : encoded.shape[1]] = encoded
    target_ids = np.zeros((len(examples), n_ctx), dtype=np.int64)
    for row, sequence in enumerate(targets):
        unknown = [label for label in sequence if label not in labels]
        if unknown:
            raise InputError(f"target label {unknown[0]!r} is not one of the task's labels.")
        target_ids[row, : len(sequence)] = [labels.id(label) for label in sequence]
    return Split(inputs, targets, ids, target_ids, lengths)
