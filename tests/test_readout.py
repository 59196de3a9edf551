"""The classifier's refit on the whole domain (`tprog.readout`): the design matrix is the hard
model's classifier, the linear program separates what can be separated and only that,
conflicts are found, and `tprog continue ... train.refit_readout=true` leaves no more inputs
wrong than before, as `tprog verify` counts them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_cli import tprog
from tests.test_prune import TINY as PRUNE_TINY
from tprog.errors import ConfigError
from tprog.pipeline import continue_run, train_and_decompile
from tprog.readout import (
    READOUT,
    Rows,
    _classifier,
    _leads,
    column_groups,
    design_matrix,
    fit_classifier,
    resolve_conflicts,
    scored_rows,
)
from tprog.rundir import load_run
from tprog.tasks import task_config
from tprog.train import resolve

ALLOWED = np.array([False, True, True, True])  # label 0 (<pad>) is never predicted


def rows_of(values, labels, counts=None) -> Rows:
    values = np.asarray(values, dtype=np.int64)
    counts = np.ones(len(values), np.int64) if counts is None else np.asarray(counts)
    example = np.column_stack([np.arange(len(values)), np.zeros(len(values), np.int64)])
    return Rows(values, np.asarray(labels), counts, example)


def test_conflicts_keep_the_label_most_positions_have() -> None:
    rows = rows_of([[0, 1], [0, 1], [1, 0], [1, 1], [1, 1]], [1, 2, 1, 3, 2], [3, 5, 2, 1, 1])
    kept, conflicts = resolve_conflicts(rows)
    # (0, 1): label 2 has 5 positions against 3; (1, 1): a tie, the lower label (2) stays
    assert kept.tolist() == [1, 2, 4]
    assert [group.tolist() for group in conflicts] == [[0, 1], [3, 4]]


def test_a_separable_set_is_separated_by_the_sparsest_classifier() -> None:
    # two categorical variables of 3 values; the label is 1 + the first variable's value, so
    # the second variable needs no weight at all
    values = [[a, b] for a in range(3) for b in range(3)]
    labels = np.array([1 + a for a, _ in values])
    design = design_matrix(np.array(values), n_cat=2, d_var=3)
    groups = column_groups(n_cat=2, d_var=3, n_num=0)
    weights, facts = fit_classifier(design, labels, ALLOWED, groups, start=np.array([0]))
    assert facts["lp_rows_short"] == 0
    assert (_leads(design @ weights, labels, ALLOWED) >= 1 - 1e-6).all()
    assert np.allclose(weights[3:], 0), "the second variable got weight it does not need"
    assert np.allclose(weights[:, 0], 0), "a masked label got weight"


def test_what_no_sum_of_per_variable_weights_can_compute_is_left_short() -> None:
    # label 1 + (a xor b): a sum of a's weights and b's weights cannot compute xor
    values = np.array([[a, b] for a in range(2) for b in range(2)])
    labels = 1 + (values[:, 0] ^ values[:, 1])
    design = design_matrix(values, n_cat=2, d_var=2)
    groups = column_groups(n_cat=2, d_var=2, n_num=0)
    weights, facts = fit_classifier(design, labels, ALLOWED[:3], groups, start=np.arange(4))
    assert facts["lp_rows_short"] > 0
    assert (_leads(design @ weights, labels, ALLOWED[:3]) <= 0).sum() >= 1


def test_numerical_variables_enter_the_design_by_value() -> None:
    # label 2 exactly where the count exceeds 2: a threshold on one numerical variable
    values = np.array([[0, count] for count in range(6)])
    labels = np.where(values[:, 1] > 2, 2, 1)
    design = design_matrix(values, n_cat=1, d_var=2)
    groups = column_groups(n_cat=1, d_var=2, n_num=1)
    weights, facts = fit_classifier(design, labels, ALLOWED[:3], groups, start=np.arange(6))
    assert facts["lp_rows_short"] == 0
    assert (_leads(design @ weights, labels, ALLOWED[:3]) > 0).all()


# test_prune's tiny hist (inputs of at most 4 symbols, one layer), not pruned, trained briefly
TINY = {
    **{key: value for key, value in PRUNE_TINY.items() if not key.startswith("train.prune")},
    "train.epochs": 4,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """hist on inputs of at most 4 symbols (1,554 of them), trained too briefly to be right."""
    out = tmp_path_factory.mktemp("readout") / "hist"
    train_and_decompile(task_config("hist", TINY), out, progress=False)
    return out


def test_the_design_matrix_times_the_classifier_is_the_hard_models_logits(trained) -> None:
    run = load_run(trained)
    model = run.load_model()
    _, dataset = resolve(run.config)
    rows = scored_rows(model, dataset.test, model.hard_tables(), 0)
    n_cat = len(model.shape.layout.categorical())
    logits = design_matrix(rows.values, n_cat, model.shape.d_var) @ _classifier(model)
    # the hard model's own logits at the same positions, found through the rows' examples
    with torch.no_grad():
        hard = model(torch.as_tensor(dataset.test.ids), torch.as_tensor(dataset.test.lengths))
    index, position = rows.example.T
    expected = hard[index, position].numpy()
    allowed = ~model.masked.numpy()
    assert np.allclose(logits[:, allowed], expected[:, allowed], rtol=0, atol=1e-9)


def test_continue_with_a_refit_leaves_no_more_inputs_wrong(trained, tmp_path) -> None:
    out = tmp_path / "refit"
    result = tprog(
        "continue", str(trained), "train.refit_readout=true", "train.refine_holdout=false",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    readout = json.loads((out / READOUT).read_text())
    assert readout["domain"] == "whole domain" and readout["n_inputs"] == 1554
    assert readout["wrong_before"] > 0, "the tiny run should leave inputs to mend"
    assert readout["kept"] and readout["wrong_after"] <= readout["wrong_before"]
    verified = tprog("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    report = json.loads((out / "verify.json").read_text())
    assert report["n_inputs"] == 1554
    assert round((1 - report["sequence_accuracy"]) * 1554) == readout["wrong_after"]
    results = json.loads((out / "results.json").read_text())
    assert results["readout"] == readout
    assert results["agreement"]["code"] == 1.0
    header = (out / "program.py").read_text()
    assert "Classifier refit on every input of the domain (train.refit_readout" in header
    # a run continued from this one says what its model went through
    again = continue_run(out, tmp_path / "again", {}, progress=False)
    lineage = json.loads((again.run_dir / "continued_from.json").read_text())
    assert lineage["readout"]["wrong_after"] == readout["wrong_after"]


def test_a_refit_needs_the_holdout_given_up(tmp_path) -> None:
    config = task_config("hist", {**TINY, "train.refit_readout": True})
    with pytest.raises(ConfigError, match="refine_holdout=false"):
        train_and_decompile(config, tmp_path / "hist", progress=False)


def test_a_refit_needs_a_domain_it_can_enumerate(tmp_path) -> None:
    # dyck2 at its paper length has 4^15 inputs; refused before any training
    overrides = {"train.refit_readout": True, "train.refine_holdout": False, "train.epochs": 1}
    config = task_config("dyck2", overrides)
    with pytest.raises(ConfigError, match="more than the 1,000,000"):
        train_and_decompile(config, tmp_path / "dyck2", progress=False)
    assert not (tmp_path / "dyck2").exists()
