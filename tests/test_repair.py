"""Predicate edits after the classifier's refit (`tprog.repair`): an edit changes one query
value's key and nothing else, the stage needs the refit, and `tprog continue ...
train.refit_edits=N` leaves no more inputs wrong than the refit did, as `tprog verify` counts
them, in a program still equal to its model."""

import json
from pathlib import Path

import pytest
import torch

from tests.test_cli import tprog
from tests.test_prune import pruned_run
from tests.test_readout import TINY
from tprog.errors import ConfigError
from tprog.pipeline import continue_run, train_and_decompile
from tprog.readout import READOUT, Refitter
from tprog.repair import REPAIR, _edits, describe, edit_predicate
from tprog.rundir import load_run
from tprog.tasks import task_config
from tprog.train import resolve

REFIT = ["train.refit_readout=true", "train.refine_holdout=false"]


def tiny_reverse_run(out: Path) -> Path:
    """reverse on inputs of at most 3 symbols (155 of them), one layer, trained briefly: the
    refit alone leaves inputs wrong."""
    train_and_decompile(task_config("reverse", TINY), out, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return tiny_reverse_run(tmp_path_factory.mktemp("repair") / "reverse")


@pytest.mark.parametrize("kind", ["cat_attn", "num_attn"])
def test_an_edit_moves_one_query_values_key_and_nothing_else(trained, kind) -> None:
    model = load_run(trained).load_model()
    before = getattr(model.blocks[0], kind).predicate.detach().clone()
    chosen = before.argmax(-1)  # [heads, query] -> key
    key = (int(chosen[1, 2]) + 1) % before.shape[-1]
    edited = edit_predicate(model, (0, kind, 1, 2, key))
    after = getattr(edited.blocks[0], kind).predicate.detach()
    expected = chosen.clone()
    expected[1, 2] = key
    assert torch.equal(after.argmax(-1), expected)
    changed = (after != before).nonzero().tolist()
    assert changed == [[1, 2, key]], "the edit touched more than one logit"
    assert torch.equal(getattr(model.blocks[0], kind).predicate, before), "the model changed"


def test_what_pruning_removed_is_neither_edited_nor_read_for_conflicts(tmp_path) -> None:
    # a removed module still computes its own variable; the classifier may not weigh it
    run = load_run(pruned_run(tmp_path / "hist"))
    model = run.load_model()
    _, dataset = resolve(run.config)
    refitter = Refitter(run, dataset, model)
    assert refitter.removed, "the tiny pruning should remove something"
    problem = refitter.problem(model)
    assert len(refitter.unusable_vars)
    assert (problem.rows.values[:, refitter.unusable_vars] == 0).all()
    heads = {describe(edit, model, run.vocab)["head"] for edit in _edits(model, refitter.removed)}
    assert heads and not heads & set(refitter.removed)


def test_edits_need_the_refit(tmp_path) -> None:
    config = task_config("reverse", {**TINY, "train.refit_edits": 2})
    with pytest.raises(ConfigError, match=r"needs train\.refit_readout=true"):
        train_and_decompile(config, tmp_path / "reverse", progress=False)
    assert not (tmp_path / "reverse").exists()


@pytest.mark.slow
def test_continue_with_edits_leaves_no_more_inputs_wrong_than_the_refit(trained, tmp_path) -> None:
    out = tmp_path / "edited"
    result = tprog(
        "continue", str(trained), *REFIT, "train.refit_edits=2", "train.refit_candidates=2",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    readout = json.loads((out / READOUT).read_text())
    repair = json.loads((out / REPAIR).read_text())
    assert f"inputs wrong {repair['wrong_before']} -> {repair['wrong_after']}" in result.stdout
    assert readout["wrong_after"] > 0, "the tiny run should leave the edits inputs to mend"
    assert repair["wrong_before"] == readout["wrong_after"]
    assert repair["tried"], "no edit was tried"
    assert all(tried["step"] in (1, 2) for tried in repair["tried"])
    assert len([tried for tried in repair["tried"] if tried["step"] == 1]) <= 2
    for tried in repair["tried"]:  # one layer: its heads read only the inputs
        edit = tried["edit"]
        for variable, value in (
            (edit["query_variable"], edit["query"]),
            (edit["key_variable"], edit["key"]),
        ):
            assert variable in ("tokens", "positions")
            assert isinstance(value, str if variable == "tokens" else int), edit
    # each kept edit left fewer inputs wrong than the step before it
    wrong = [repair["wrong_before"]] + [edit["wrong_after"] for edit in repair["edits"]]
    assert wrong == sorted(wrong, reverse=True) and len(set(wrong)) == len(wrong)
    assert repair["wrong_after"] == wrong[-1]
    verified = tprog("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    report = json.loads((out / "verify.json").read_text())
    assert round((1 - report["sequence_accuracy"]) * report["n_inputs"]) == repair["wrong_after"]
    results = json.loads((out / "results.json").read_text())
    assert results["repair"] == repair
    assert results["agreement"]["code"] == 1.0
    header = (out / "program.py").read_text()
    assert "Predicates edited after the refit (train.refit_edits" in header
    again = continue_run(out, tmp_path / "again", {}, progress=False)
    lineage = json.loads((again.run_dir / "continued_from.json").read_text())
    assert lineage["repair"]["wrong_after"] == repair["wrong_after"]
