"""Faithfulness: the hard model, the IR interpreter and the generated code, on every example."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from tprog.data import Dataset, Split
from tprog.interpret import predict_ids
from tprog.ir import Program


@dataclass(frozen=True)
class Divergence:
    """The first example on which a program's output differs from the hard model's."""

    which: str  # "ir", "code" (the module's run) or "batched code" (its run_batch)
    split: str
    index: int
    tokens: list[str]
    model_output: list[str]
    program_output: list[str]

    def describe(self) -> str:
        return (
            f"the {self.which} disagrees with the hard model on {self.split} example {self.index} "
            f"{' '.join(self.tokens)!r}: model {' '.join(self.model_output)!r}, "
            f"{self.which} {' '.join(self.program_output)!r}."
        )


@dataclass(frozen=True)
class Agreement:
    ir: float  # fraction of examples whose whole output equals the hard model's
    code: float  # ... for the generated module's run and run_batch both
    n_examples: int
    first: Divergence | None
    ir_predictions: dict[str, np.ndarray]  # split -> the interpreter's label ids [B, n]


def _labels(row: np.ndarray, length: int, labels: tuple[str, ...]) -> list[str]:
    return [labels[c] for c in row[:length]]


def rows_agree(a: np.ndarray, b: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``[B]``: whether two ``[B, n]`` predictions are equal on every real position."""
    real = np.arange(a.shape[1])[None, :] < lengths[:, None]
    return ((a == b) | ~real).all(-1)


def check_split(
    name: str,
    split: Split,
    model_pred: np.ndarray,
    ir_pred: np.ndarray,
    program: Program,
    module: ModuleType | None,
) -> tuple[int, int, Divergence | None]:
    """``(ir_agreeing, code_agreeing, first divergence)`` over the examples of one split; the
    generated code agrees on an example when both its ``run`` and its ``run_batch`` do."""
    labels = program.classifier.labels
    ir_ok = rows_agree(ir_pred, model_pred, split.lengths)
    first = None
    if not ir_ok.all():
        i = int(np.flatnonzero(~ir_ok)[0])
        n = int(split.lengths[i])
        first = Divergence(
            "ir",
            name,
            i,
            split.inputs[i],
            _labels(model_pred[i], n, labels),
            _labels(ir_pred[i], n, labels),
        )
    code_ok = 0
    if module is not None:
        batched = module.run_batch([list(tokens) for tokens in split.inputs])
        for i, tokens in enumerate(split.inputs):
            expected = _labels(model_pred[i], len(tokens), labels)
            got = module.run(list(tokens))
            if got == expected and batched[i] == expected:
                code_ok += 1
            elif first is None:
                which, wrong = ("code", got) if got != expected else ("batched code", batched[i])
                first = Divergence(which, name, i, tokens, expected, wrong)
    return int(ir_ok.sum()), code_ok, first


def check_agreement(
    model_predictions: dict[str, np.ndarray],
    program: Program,
    module: ModuleType | None,
    dataset: Dataset,
) -> Agreement:
    """Compare with the hard model's predictions (split -> label ids) on every train/val/test
    example; ``module=None`` skips the generated code."""
    ir_total = code_total = n = 0
    first = None
    ir_predictions = {}
    for name in ("train", "val", "test"):
        split: Split = getattr(dataset, name)
        ir_predictions[name] = predict_ids(program, split.ids, split.lengths)
        ir_ok, code_ok, divergence = check_split(
            name, split, model_predictions[name], ir_predictions[name], program, module
        )
        ir_total, code_total, n = ir_total + ir_ok, code_total + code_ok, n + len(split)
        first = first or divergence
    code = code_total / n if module is not None else float("nan")
    return Agreement(ir_total / n, code, n, first, ir_predictions)
