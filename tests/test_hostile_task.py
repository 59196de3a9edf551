"""A trained program whose vocabulary and labels are hostile strings stays exact and inert."""

from pathlib import Path

import numpy as np

from tests.test_codegen import HOSTILE, HOSTILE_LABELS, run_in_fresh_interpreter
from tprog.interpret import run_program
from tprog.pipeline import load_program, train_and_decompile
from tprog.tasks import register_task, task_config

TOKENS = tuple(t for t in HOSTILE if t != "<unk>")  # no <unk>: unknown tokens must be rejected
LABELS = HOSTILE_LABELS[:3]


def generate(rng: np.random.Generator, data) -> tuple[list[str], list[str]]:
    content = [TOKENS[i] for i in rng.integers(0, len(TOKENS), int(rng.integers(1, 5)))]
    # The label of a token depends on the first token: a one-head task the model can learn.
    first = TOKENS.index(content[0])
    return ["<s>", *content], ["<pad>", *[LABELS[(first + TOKENS.index(t)) % 3] for t in content]]


register_task(
    "hostile_copy",
    generate,
    input_tokens=["<s>", *TOKENS],
    labels=LABELS,
    defaults={"model.n_layers": 1, "data.vocab_size": len(TOKENS) + 2, "data.max_length": 5},
    replace=True,
)


def test_hostile_vocabulary_trains_to_an_exact_inert_program(tmp_path: Path) -> None:
    config = task_config("hostile_copy", {"data.size": 600, "train.epochs": 4, "model.d_mlp": 8})
    outcome = train_and_decompile(config, tmp_path / "run", progress=False)
    assert outcome.results["agreement"] == {"unsimplified_ir": 1.0, "ir": 1.0, "code": 1.0}
    program = load_program(tmp_path / "run")
    rng = np.random.default_rng(0)
    inputs = [generate(rng, config.data)[0] for _ in range(200)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A fresh interpreter whose os.system, subprocess, print, ... trip a marker if touched.
    result = run_in_fresh_interpreter(tmp_path / "run" / "program.py", inputs, elsewhere)
    assert result["outputs"] == result["batched"] == run_program(program, inputs)
