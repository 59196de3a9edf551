"""Verification: a program against its task's ground truth on every input the task admits.

Training and decompilation check a program on the examples the generator happened to draw (a
few thousand of sort's 19,530 inputs); a program can be faithful to its model and still be wrong
on inputs nobody drew. When the task declares its input domain (`tprog.tasks.domain`) and the
domain has at most ``max_inputs`` inputs, the program runs on all of them, shortest first, and is
compared with the targets the task computes for each. Larger domains are sampled uniformly over
the domain (not the training distribution, which over-represents short inputs); tasks without a
declared domain fall back to samples from their own generator. The report says which was done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from tprog.config import DataConfig, RunConfig
from tprog.errors import ConfigError, InputError
from tprog.faithful import rows_agree
from tprog.interpret import predict_ids
from tprog.ir import Program
from tprog.tasks.domain import InputDomain, TokenRows
from tprog.tasks.registry import Task, get_task, import_task_module
from tprog.vocab import encode_batch

VERIFY_JSON = "verify.json"
DEFAULT_MAX_INPUTS = 1_000_000  # enumerate domains up to this size, sample larger ones
DEFAULT_SAMPLE = 100_000
MAX_COUNTEREXAMPLES = 10
WHOLE_DOMAIN = "whole domain"
_ROWS = 8192  # inputs per chunk: memory stays bounded whatever the domain's size

T = TypeVar("T")
Chunk = tuple[TokenRows, TokenRows]  # inputs, and the targets of each


@dataclass(frozen=True)
class Counterexample:
    """An input on which the program misses a target (``<pad>`` targets are not scored)."""

    input: tuple[str, ...]
    expected: tuple[str, ...]
    predicted: tuple[str, ...]


@dataclass(frozen=True)
class Disagreement:
    """An input on which a reference program's output differs from the program's."""

    input: tuple[str, ...]
    program: tuple[str, ...]
    reference: tuple[str, ...]


@dataclass(frozen=True)
class ReferenceCheck:
    name: str
    agreement: float  # fraction of checked inputs with equal outputs: exactly 1.0 when all are
    first_disagreement: Disagreement | None  # the shortest such input, if any


@dataclass(frozen=True)
class LengthCount:
    length: int  # tokens in the input, special tokens included
    n_inputs: int
    n_wrong: int


@dataclass(frozen=True)
class VerifyReport:
    task: str
    mode: str  # "whole domain", "uniform sample of N" or "generator sample of N"
    n_inputs: int
    domain_size: int | None  # None when the task declares no domain
    seed: int | None  # None when nothing was random
    token_accuracy: float  # over non-<pad> targets, as in training
    sequence_accuracy: float  # inputs whose every scored position is right
    n_wrong: int  # inputs with at least one wrong scored position
    counterexamples: tuple[Counterexample, ...]  # shortest first
    references: tuple[ReferenceCheck, ...] = ()
    # Per input length, how many inputs were checked and how many were wrong: where a learned
    # algorithm breaks (e.g. only on the shortest inputs, which the training data rarely holds).
    by_length: tuple[LengthCount, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_program(
    program: Program,
    task: Task,
    data: DataConfig,
    *,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    reference_programs: Sequence[tuple[str, Program]] = (),
) -> VerifyReport:
    """Check ``program`` against ``task``'s targets on its whole input domain under ``data``
    when the domain has at most ``max_inputs`` inputs, else on ``sample`` inputs drawn
    independently with ``np.random.default_rng(seed)``; and each named reference program (e.g.
    the unsimplified one) against ``program`` on the same inputs."""
    if max_inputs < 0 or sample < 1:
        raise ConfigError("verification needs max_inputs >= 0 and a sample of at least 1.")
    labels = program.classifier.labels
    for name, reference in reference_programs:
        # Outputs are compared as label ids, which mean the same only over the same labels.
        if (reference.vocab, reference.classifier.labels) != (program.vocab, labels):
            raise ConfigError(f"reference program {name!r} has other tokens or labels.")
    rng = np.random.default_rng(seed)
    mode, domain_size, chunks = plan_inputs(task, data, max_inputs, sample, rng)
    tally = _Tally(program, reference_programs)
    for inputs, targets in chunks:
        tally.add(inputs, targets)
    return tally.report(task.name, mode, domain_size, None if mode == WHOLE_DOMAIN else seed)


def verify_for_run(
    program: Program,
    config: RunConfig,
    *,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    reference_programs: Sequence[tuple[str, Program]] = (),
) -> VerifyReport:
    """`verify_program` for the task and data settings of a run's config (what decompile has
    at hand), importing the run's task module first when the task is a user's."""
    if config.task_module:
        import_task_module(config.task_module)
    return verify_program(
        program,
        get_task(config.task),
        config.data,
        max_inputs=max_inputs,
        sample=sample,
        seed=seed,
        reference_programs=reference_programs,
    )


def plan_inputs(
    task: Task, data: DataConfig, max_inputs: int, sample: int, rng: np.random.Generator
) -> tuple[str, int | None, Iterator[Chunk]]:
    """``(mode, domain size, chunks of inputs with targets)``: the domain when it is small
    enough, else a uniform sample of it, else (no declared domain) the task's generator."""
    domain = task.input_domain(data)
    if domain is None:
        return f"generator sample of {sample}", None, _generated(task, data, sample, rng)
    size = domain.size()
    if size <= max_inputs:
        return WHOLE_DOMAIN, size, _with_targets(domain, domain.chunks(_ROWS))
    draws = (domain.sample(rng, rows) for rows in chunk_sizes(sample))
    return f"uniform sample of {sample}", size, _with_targets(domain, draws)


def chunk_sizes(total: int) -> Iterator[int]:
    """Chunk sizes that add up to ``total``, at most `_ROWS` each."""
    for start in range(0, total, _ROWS):
        yield min(_ROWS, total - start)


def _with_targets(domain: InputDomain, chunks: Iterator[TokenRows]) -> Iterator[Chunk]:
    for inputs in chunks:
        yield inputs, [domain.targets(tokens) for tokens in inputs]


def _generated(
    task: Task, data: DataConfig, sample: int, rng: np.random.Generator
) -> Iterator[Chunk]:
    # The generator's own targets are the only ground truth a task without a domain has.
    for rows in chunk_sizes(sample):
        examples = [task.generate(rng, data) for _ in range(rows)]
        yield [list(x) for x, _ in examples], [list(y) for _, y in examples]


class _Shortest(Generic[T]):
    """The ``limit`` shortest distinct inputs offered so far, then lexicographic by token id:
    the same whether inputs arrive in domain order or at random."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.found: dict[tuple[int, tuple[int, ...]], T] = {}

    def offer(
        self, rows: np.ndarray, ids: np.ndarray, lengths: np.ndarray, make: Callable[[int], T]
    ) -> None:
        """Consider the inputs ``rows`` of a chunk; ``make(row)`` describes one that is kept."""
        # Distinct rows of (length, ids...) come out of np.unique in exactly our order; a sample
        # may repeat an input, which must count once.
        _, first = np.unique(np.column_stack([lengths[rows], ids[rows]]), axis=0, return_index=True)
        for row in rows[first[: self.limit]].tolist():
            key = (int(lengths[row]), tuple(ids[row, : lengths[row]].tolist()))
            if key not in self.found:
                self.found[key] = make(row)
        self.found = {key: self.found[key] for key in sorted(self.found)[: self.limit]}

    def items(self) -> tuple[T, ...]:
        return tuple(self.found.values())


def score_rows(predicted: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Label ids ``[B, N]`` against the expected ones (0, ``<pad>``, is not scored): per row,
    whether any scored label is wrong; the number of scored labels; the number right."""
    scored = expected != 0
    right = scored & (predicted == expected)
    return (scored & ~right).any(axis=1), int(scored.sum()), int(right.sum())


class _Tally:
    """Running counts over chunks: nothing grows with the number of inputs checked."""

    def __init__(self, program: Program, references: Sequence[tuple[str, Program]]) -> None:
        self.program = program
        self.references = tuple(references)
        self.label_ids = {label: i for i, label in enumerate(program.classifier.labels)}
        self.n_inputs = self.n_wrong = self.n_scored = self.n_right = 0
        self.counterexamples: _Shortest[Counterexample] = _Shortest(MAX_COUNTEREXAMPLES)
        self.inputs_by_length = np.zeros(program.n_ctx + 1, dtype=np.int64)
        self.wrong_by_length = np.zeros(program.n_ctx + 1, dtype=np.int64)
        self.agreeing = [0] * len(self.references)
        self.disagreements: list[_Shortest[Disagreement]] = [_Shortest(1) for _ in references]

    def add(self, inputs: TokenRows, targets: TokenRows) -> None:
        ids, lengths = self._encode(inputs)
        expected = self._target_ids(targets, ids.shape)
        predicted = predict_ids(self.program, ids, lengths)
        wrong, n_scored, n_right = score_rows(predicted, expected)
        self.n_inputs += len(inputs)
        self.n_wrong += int(wrong.sum())
        self.n_scored += n_scored
        self.n_right += n_right
        self.inputs_by_length += np.bincount(lengths, minlength=len(self.inputs_by_length))
        self.wrong_by_length += np.bincount(lengths[wrong], minlength=len(self.wrong_by_length))
        self.counterexamples.offer(
            np.flatnonzero(wrong),
            ids,
            lengths,
            lambda row: Counterexample(
                tuple(inputs[row]), tuple(targets[row]), self._labels(predicted[row], inputs[row])
            ),
        )
        for i, (_, reference) in enumerate(self.references):
            theirs = predict_ids(reference, ids, lengths)
            differ = ~rows_agree(theirs, predicted, lengths)
            self.agreeing[i] += len(inputs) - int(differ.sum())
            self.disagreements[i].offer(
                np.flatnonzero(differ),
                ids,
                lengths,
                lambda row, theirs=theirs: Disagreement(
                    tuple(inputs[row]),
                    self._labels(predicted[row], inputs[row]),
                    self._labels(theirs[row], inputs[row]),
                ),
            )

    def report(
        self, task: str, mode: str, domain_size: int | None, seed: int | None
    ) -> VerifyReport:
        checks = tuple(
            ReferenceCheck(name, agreeing / self.n_inputs, next(iter(first.items()), None))
            for (name, _), agreeing, first in zip(
                self.references, self.agreeing, self.disagreements, strict=True
            )
        )
        token_accuracy = self.n_right / self.n_scored if self.n_scored else float("nan")
        sequence_accuracy = (self.n_inputs - self.n_wrong) / self.n_inputs
        return VerifyReport(
            task,
            mode,
            self.n_inputs,
            domain_size,
            seed,
            token_accuracy,
            sequence_accuracy,
            self.n_wrong,
            self.counterexamples.items(),
            checks,
            by_length=tuple(
                LengthCount(length, int(count), int(self.wrong_by_length[length]))
                for length, count in enumerate(self.inputs_by_length.tolist())
                if count
            ),
        )

    def _encode(self, inputs: TokenRows) -> tuple[np.ndarray, np.ndarray]:
        # Padded to the full context, like every split the program was checked on before.
        program = self.program
        encoded, lengths = encode_batch(inputs, program.vocab, program.n_ctx, program.unk)
        ids = np.zeros((len(inputs), program.n_ctx), dtype=np.int64)
        ids[:, : encoded.shape[1]] = encoded
        return ids, lengths

    def _target_ids(self, targets: TokenRows, shape: tuple[int, ...]) -> np.ndarray:
        out = np.zeros(shape, dtype=np.int64)
        try:
            for row, sequence in enumerate(targets):
                out[row, : len(sequence)] = [self.label_ids[label] for label in sequence]
        except KeyError as exc:
            raise InputError(
                f"target {exc.args[0]!r} is not one of the program's labels."
            ) from None
        return out

    def _labels(self, predicted: np.ndarray, tokens: Sequence[str]) -> tuple[str, ...]:
        labels = self.program.classifier.labels
        return tuple(labels[c] for c in predicted[: len(tokens)].tolist())
