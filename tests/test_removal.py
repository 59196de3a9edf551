"""Module removals after the classifier's refit (`tprog.removal`): which modules are live, what
removing one changes, that the stage needs the refit, and that `tprog continue ...
train.refit_removals=N` leaves no more inputs wrong, drops what it removed from the program and
keeps it removed in runs continued from it."""

import json
from pathlib import Path

import pytest
import torch

from tests.test_cli import tprog
from tests.test_readout import TINY
from tests.test_repair import REFIT, tiny_reverse_run
from tprog import ir
from tprog.errors import ConfigError
from tprog.extract import model_to_ir
from tprog.model.layout import Layout
from tprog.model.program import Shape, TransformerProgram
from tprog.pipeline import continue_run, train_and_decompile
from tprog.prune import removed_copy
from tprog.removal import live_modules
from tprog.rundir import REMOVAL
from tprog.tasks import task_config

LAYOUT = Layout(n_layers=2, n_heads_cat=1, n_heads_num=1, n_mlps_cat=1, n_mlps_num=0)
# categorical stack: tokens 0, positions 1, attn_0_0 2, mlp_0_0 3, attn_1_0 4, mlp_1_0 5
# numerical stack: ones 0, num_attn_0_0 1, num_attn_1_0 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return tiny_reverse_run(tmp_path_factory.mktemp("removal") / "reverse")


def _chain() -> TransformerProgram:
    """A random model whose classifier weighs only ``attn_1_0``, which reads ``attn_0_0`` as
    its query (``mlp_0_0`` its second choice), ``tokens`` as its key and ``mlp_0_0`` as its
    value; ``attn_0_0`` reads the inputs."""
    shape = Shape(LAYOUT, d_var=6, n_ctx=6, d_mlp=8, n_labels=3, causal=False)
    model = TransformerProgram(shape, [True, False, False], torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.w_cat.zero_()
        model.w_num.zero_()
        model.w_cat[4, 1, 2] = 1.0
        reads = model.blocks[1].cat_attn.read.logits  # [query, key, value] x 4 options
        reads.copy_(torch.tensor([[0.0, 0, 5, 1], [5, 0, 0, 0], [0, 0, 0, 5]]))
        model.blocks[0].cat_attn.read.logits.copy_(torch.tensor([[0.0, 5], [5, 0], [5, 0]]))
    return model


def _program(model: TransformerProgram) -> ir.Program:
    return model_to_ir(model, task="chain", vocab=list("_abcde"), labels=["x", "y", "z"])


def module_reads(model: TransformerProgram) -> dict[str, list[str]]:
    """The variables each module of ``model``'s program reads."""
    return {module.name: list(ir.reads(module)) for module in _program(model).modules}


def test_the_live_modules_are_those_the_classifier_weighs_and_those_they_read() -> None:
    model = _chain()
    assert module_reads(model)["attn_1_0"] == ["attn_0_0", "tokens", "mlp_0_0"]
    assert module_reads(model)["attn_0_0"] == ["positions", "tokens", "tokens"]
    assert live_modules(_program(model), []) == ["attn_0_0", "mlp_0_0", "attn_1_0"]
    # a module the classifier weighs only through a removed reader is not live
    assert live_modules(_program(model), ["attn_1_0"]) == []
    with torch.no_grad():
        model.w_num[1, 0] = 0.5  # the classifier weighs num_attn_0_0 too
    assert live_modules(_program(model), []) == ["attn_0_0", "num_attn_0_0", "mlp_0_0", "attn_1_0"]


def test_a_removed_module_is_read_by_nothing_and_weighed_by_nothing() -> None:
    model = _chain()
    held = removed_copy(model, ["attn_0_0"])
    reads = module_reads(held)
    assert all("attn_0_0" not in read for read in reads.values())
    assert reads["attn_1_0"][0] == "mlp_0_0", "the query should read its next choice"
    assert module_reads(model)["attn_1_0"][0] == "attn_0_0", "the model itself changed"
    assert live_modules(_program(held), ["attn_0_0"]) == ["mlp_0_0", "attn_1_0"]
    with torch.no_grad():
        model.w_cat[2] = 1.0
    assert removed_copy(model, ["attn_0_0"]).w_cat[2].abs().max() == 0


def test_removals_need_the_refit(tmp_path) -> None:
    config = task_config("reverse", {**TINY, "train.refit_removals": 2})
    with pytest.raises(ConfigError, match=r"refit_removals .* needs train\.refit_readout=true"):
        train_and_decompile(config, tmp_path / "reverse", progress=False)
    assert not (tmp_path / "reverse").exists()


@pytest.mark.slow
def test_continue_with_removals_keeps_the_domain_and_drops_the_modules(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cut"
    result = tprog(
        "continue", str(trained), *REFIT, "train.refit_removals=3", "train.refit_candidates=2",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    removal = json.loads((out / REMOVAL).read_text())
    readout = json.loads((out / "readout.json").read_text())
    assert removal["wrong_before"] == readout["wrong_after"]
    assert removal["wrong_after"] <= removal["wrong_before"]
    assert removal["removed"], "a one-layer reverse this short should spare some module"
    assert f"inputs wrong {removal['wrong_before']} -> {removal['wrong_after']}" in result.stdout
    # a removal is kept exactly when it leaves no more inputs wrong than the step before it
    wrong, kept = removal["wrong_before"], []
    for tried in removal["tried"]:
        assert tried["step"] in (1, 2, 3) and tried["conflicts"] >= 0 and tried["short"] >= 0
        if tried["wrong"] <= wrong:
            wrong = tried["wrong"]
            kept.append(tried["module"])
    assert kept == removal["removed"] and wrong == removal["wrong_after"]
    program = json.loads((out / "program.json").read_text())
    assert not {module["name"] for module in program["modules"]} & set(removal["removed"])
    verified = tprog("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    report = json.loads((out / "verify.json").read_text())
    assert round((1 - report["sequence_accuracy"]) * report["n_inputs"]) == removal["wrong_after"]
    results = json.loads((out / "results.json").read_text())
    assert results["removal"] == removal
    assert results["agreement"]["code"] == 1.0
    assert "Heads and MLPs removed after the refit" in (out / "program.py").read_text()
    again = continue_run(out, tmp_path / "again", {}, progress=False)
    lineage = json.loads((again.run_dir / "continued_from.json").read_text())
    assert set(removal["removed"]) <= set(lineage["removed"])
    assert lineage["removal"]["removed"] == removal["removed"]
