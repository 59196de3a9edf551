"""The faithfulness check runs the generated module's `run` and `run_batch` on every example and
names the first example either gets wrong."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tests.test_codegen import _hand_program, generate
from tprog.data import Split
from tprog.faithful import check_split
from tprog.interpret import predict_ids
from tprog.vocab import encode_batch

INPUTS = [["a", "b", "c"], ["c", "c", "b", "a"], ["b"], ["a", "a", "c"], ["c", "a"]]


def _split_and_predictions(program):
    ids, lengths = encode_batch(INPUTS, program.vocab, program.n_ctx, program.unk)
    split = Split(INPUTS, INPUTS, ids, np.zeros_like(ids), lengths)
    return split, predict_ids(program, ids, lengths)  # the interpreter stands in for the model


def test_a_faithful_module_agrees_on_every_example(tmp_path: Path) -> None:
    program = _hand_program()
    _, module = generate(program, tmp_path)
    split, predictions = _split_and_predictions(program)
    assert check_split("test", split, predictions, predictions, program, module) == (5, 5, None)


def test_a_wrong_run_or_run_batch_is_named_with_its_first_example(tmp_path: Path) -> None:
    program = _hand_program()
    _, module = generate(program, tmp_path)
    split, predictions = _split_and_predictions(program)

    def wrong_from_third(outputs):
        return [row if i < 3 else ["?"] * len(row) for i, row in enumerate(outputs)]

    broken_batch = SimpleNamespace(
        run=module.run, run_batch=lambda inputs: wrong_from_third(module.run_batch(inputs))
    )
    ir_ok, code_ok, first = check_split(
        "val", split, predictions, predictions, program, broken_batch
    )
    assert (ir_ok, code_ok) == (5, 3)
    assert (first.which, first.split, first.index, first.program_output) == (
        "batched code",
        "val",
        3,
        ["?"] * 3,
    )
    assert first.describe().startswith("the batched code disagrees with the hard model on val ")

    broken_run = SimpleNamespace(
        run=lambda tokens: ["?"] * len(tokens) if tokens == INPUTS[1] else module.run(tokens),
        run_batch=broken_batch.run_batch,
    )
    _, code_ok, first = check_split("val", split, predictions, predictions, program, broken_run)
    assert code_ok == 2
    assert (first.which, first.index) == ("code", 1)
