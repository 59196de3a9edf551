"""The hard model on its task's input domain: what refinement trains on and pruning can guard.

`tprog verify` checks a *program*; refinement and pruning need the same figures for the hard
*model* while it is still being trained, many times over. The hard model computes exactly what
the program computes (faithfulness is checked on every example when the program is written), so
these figures are the program's. The inputs are those `tprog verify` would check: the task's
whole domain when it is small enough to enumerate, else a uniform sample of it, else (a task
that declares no domain) samples from its generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tprog.data import Dataset, Split, encode_split
from tprog.model.program import TransformerProgram
from tprog.rundir import Run
from tprog.tasks.registry import Example
from tprog.train import Tensors, hard_predictions
from tprog.verify import DEFAULT_MAX_INPUTS, DEFAULT_SAMPLE, plan_inputs, score_rows


@dataclass(frozen=True)
class DomainCheck:
    """The hard model on the task's domain (or a uniform sample of it)."""

    mode: str  # "whole domain", "uniform sample of N" or "generator sample of N"
    n_inputs: int
    token_accuracy: float  # over non-<pad> targets
    sequence_accuracy: float  # inputs with every scored position right
    wrong: list[Example]  # every input with a wrong scored position, with its targets


class DomainInputs:
    """The inputs of a check, drawn (where sampled) with ``rng`` and encoded once, so that
    checking many models on them costs only their forward passes."""

    def __init__(self, run: Run, dataset: Dataset, rng: np.random.Generator) -> None:
        self.mode, _, chunks = plan_inputs(
            run.task, run.config.data, DEFAULT_MAX_INPUTS, DEFAULT_SAMPLE, rng
        )
        self.chunks: list[tuple[list[Example], Split]] = []
        for inputs, targets in chunks:
            examples = list(zip(inputs, targets, strict=True))
            self.chunks.append((examples, encode_examples(examples, dataset)))

    def check(self, model: TransformerProgram) -> DomainCheck:
        n_inputs = n_scored = n_right = 0
        wrong: list[Example] = []
        for examples, split in self.chunks:
            bad, scored, right = score_rows(hard_predictions(model, split), split.target_ids)
            wrong += [examples[row] for row in np.flatnonzero(bad).tolist()]
            n_inputs += len(examples)
            n_scored += scored
            n_right += right
        token_accuracy = n_right / n_scored if n_scored else math.nan
        return DomainCheck(self.mode, n_inputs, token_accuracy, 1 - len(wrong) / n_inputs, wrong)


def check_domain(model: TransformerProgram, run: Run, dataset: Dataset, round_: int) -> DomainCheck:
    """Run the hard model on the task's domain; a sampled domain gets a fresh sample per round
    (``round_``), so that each refinement round is measured on inputs it did not train on."""
    return DomainInputs(run, dataset, np.random.default_rng([run.config.seed, round_])).check(model)


def encode_examples(examples: list[Example], dataset: Dataset) -> Split:
    """``examples`` encoded with the run's vocabularies and context, as its splits are."""
    return encode_split(examples, dataset.vocab, dataset.labels, dataset.n_ctx)


def with_counterexamples(
    dataset: Dataset, added: list[Example], repeat: int, device: str
) -> Tensors:
    """The training split followed by ``repeat`` copies of each added counterexample."""
    extra = encode_examples(added, dataset)
    train = dataset.train

    def stacked(ours: np.ndarray, theirs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(
            np.concatenate([ours, np.repeat(theirs, repeat, axis=0)]), device=device
        )

    return Tensors(
        stacked(train.ids, extra.ids),
        stacked(train.target_ids, extra.target_ids),
        stacked(train.lengths, extra.lengths),
    )
