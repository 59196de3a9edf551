"""Pruning: removed modules leave the program, val accuracy stays within tolerance, refinement
keeps them removed, an interrupted pruning resumes to the identical result, and `tprog continue`
prunes a finished run without touching it."""

import itertools
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.stages import count_gumbel_draws, enter_on_call
from tests.test_cli import tprog
from tprog import prune as prune_module
from tprog.errors import ConfigError, RunDirError
from tprog.pipeline import (
    continue_run,
    load_program,
    resume_and_decompile,
    train_and_decompile,
)
from tprog.prune import (
    PRUNING,
    STATE,
    hold_removed,
    module_names,
    read_records,
    removed_modules,
)
from tprog.rundir import load_run, load_torch_file, save_torch_file
from tprog.tasks import task_config

# hist on inputs of at most 4 symbols, 1 layer of 6 modules trained briefly: some modules go
# for free, some only after fine-tuning, and at least one cannot go.
TINY = {
    "data.size": 400,
    "data.max_length": 5,
    "model.n_layers": 1,
    "model.n_heads_cat": 2,
    "model.n_heads_num": 2,
    "model.n_mlps_cat": 1,
    "model.n_mlps_num": 1,
    "model.d_mlp": 8,
    "train.epochs": 10,
    "train.batch_size": 32,
    "train.checkpoint_every": 5,
    "train.prune": True,
    "train.prune_epochs": 1,
    "train.prune_lr": 0.05,
}
OUTPUTS = ("model.pt", "checkpoint.pt", PRUNING, STATE, "results.json", "program.json")


def pruned_run(out: Path, **overrides) -> Path:
    train_and_decompile(task_config("hist", {**TINY, **overrides}), out, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return pruned_run(tmp_path_factory.mktemp("prune") / "hist")


def test_removed_modules_are_gone_from_the_program_and_val_stays_within_tolerance(reference):
    records = read_records(reference)
    results = json.loads((reference / "results.json").read_text())
    pruning = results["pruning"]
    attempts = records[1:]
    assert pruning["attempts"] == attempts
    assert [r["module"] for r in attempts] == records[0]["order"]
    assert sorted(records[0]["order"]) == sorted(module_names(load_run(reference).load_model()))
    removed = [r["module"] for r in attempts if r["removed"]]
    assert pruning["removed"] == removed
    assert 0 < len(removed) < len(attempts), "the tiny run should remove some modules, not all"
    assert any("train_loss" in r for r in attempts if r["removed"]), "none needed fine-tuning"
    for record in attempts:
        assert record["removed"] == (record["val_accuracy"] >= records[0]["val_accuracy"])
    program = load_program(reference)
    produced = {module.name for module in program.modules}
    assert produced.isdisjoint(removed)
    assert set(records[0]["order"]) - set(removed) >= produced
    assert results["agreement"] == {"unsimplified_ir": 1.0, "ir": 1.0, "code": 1.0}
    assert results["val_accuracy"] == pruning["val_accuracy"] >= pruning["trained_val_accuracy"]
    header = " ".join((reference / "program.py").read_text().split('"""')[1].split())
    assert f"Pruned after training (train.prune): {len(removed)} of 6 heads and MLPs" in header


def test_a_removed_module_is_never_read_and_adds_nothing_to_the_logits(reference) -> None:
    model = load_run(reference).load_model()
    names = module_names(model)
    hold_removed(model, names)  # everything removed: only the inputs can matter
    ids = torch.tensor([[1, 3, 4, 3, 2]])
    lengths = torch.tensor([5])
    stripped = model(ids, lengths)
    (block,) = model.blocks
    for read in (block.cat_attn.read, block.num_attn.read, block.cat_mlp.read):
        assert max(read.chosen()) < 2, "a removed categorical variable was read"
    for read in (block.num_attn.read_value, block.num_mlp.read):
        assert max(read.chosen()) == 0, "a removed numerical variable was read"
    assert torch.equal(model.w_cat[2:], torch.zeros_like(model.w_cat[2:]))
    assert torch.equal(model.w_num[1:], torch.zeros_like(model.w_num[1:]))
    # The logits are the inputs' classifier rows alone.
    expected = (model.w_cat[0].double()[ids] + model.w_cat[1].double()[torch.arange(5)]).add(
        model.w_num[0].double()
    )
    finite = ~model.masked
    assert torch.equal(stripped[..., finite], expected[..., finite])


def test_refinement_after_pruning_keeps_the_modules_removed(tmp_path) -> None:
    overrides = {"train.refine": 1, "train.refine_epochs": 2, "train.refine_lr": 0.05}
    out = pruned_run(tmp_path / "hist", **overrides, **{"train.refine_tau": 1.0})
    results = json.loads((out / "results.json").read_text())
    assert results["refinement"]["rounds"][0]["n_added"] > 0, "nothing was refined"
    produced = {module.name for module in load_program(out).modules}
    assert produced.isdisjoint(results["pruning"]["removed"])


@pytest.mark.parametrize("noise", [True, False])
def test_fine_tuning_draws_gumbel_noise_unless_told_not_to(tmp_path, monkeypatch, noise) -> None:
    """train.prune_noise=false: pruning fine-tunes on the plain softmax, training before it
    keeps its noise."""
    stage = ["training"]
    draws = count_gumbel_draws(monkeypatch, stage)
    enter_on_call(monkeypatch, prune_module, "_fine_tune", stage, "pruning")
    out = pruned_run(tmp_path / "hist", **{"train.prune_noise": noise})
    assert any("train_loss" in r for r in read_records(out)[1:]), "nothing was fine-tuned"
    assert draws["training"] > 0
    assert (draws["pruning"] > 0) == noise


@pytest.mark.parametrize("straight_through", [True, False])
def test_fine_tuning_is_straight_through_when_told(tmp_path, monkeypatch, straight_through):
    """train.prune_straight_through: every sample the fine-tuning draws is straight-through."""
    real, made = prune_module.Sampling, []

    def recording(*args):
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(prune_module, "Sampling", recording)
    pruned_run(tmp_path / "hist", **{"train.prune_straight_through": straight_through})
    assert made, "nothing was fine-tuned"
    assert {sampling.straight_through for sampling in made} == {straight_through}


def test_fine_tuning_with_counterexamples_trains_on_what_the_removal_gets_wrong(
    tmp_path, monkeypatch
) -> None:
    """train.prune_counterexamples: each epoch of a fine-tuning trains on the training split
    and copies of every domain input the model got wrong before an epoch of that attempt, with
    its true targets, and the fine-tuning stops once the removal is within tolerance."""
    real, trained_on = prune_module.with_counterexamples, []

    def recording(dataset, added, repeat, device):
        trained_on.append({tuple(inputs): targets for inputs, targets in added})
        return real(dataset, added, repeat, device)

    monkeypatch.setattr(prune_module, "with_counterexamples", recording)
    settings = {"train.prune_domain": True, "train.refine_holdout": False, "train.prune_epochs": 3}
    out = pruned_run(tmp_path / "hist", **settings, **{"train.prune_counterexamples": True})
    tuned = [r for r in read_records(out)[1:] if "train_loss" in r]
    assert tuned, "nothing was fine-tuned"
    assert sum(r["epochs"] for r in tuned) == len(trained_on)
    left = trained_on
    for record in tuned:
        epochs, left = left[: record["epochs"]], left[record["epochs"] :]
        assert all(a.keys() <= b.keys() for a, b in itertools.pairwise(epochs))
        assert len(epochs[-1]) == record["counterexamples"] > 0
        assert record["epochs"] == 3 or record["removed"], "stopped while still outside"
    assert any(r["epochs"] < 3 for r in tuned), "no fine-tuning mended a removal early"
    run = load_run(out)
    domain = run.task.input_domain(run.config.data)
    for epoch in trained_on:
        assert all(list(targets) == domain.targets(list(x)) for x, targets in epoch.items())


def test_with_the_domain_guard_no_removal_leaves_more_of_the_domain_wrong(tmp_path) -> None:
    """hist's domain here is 1,554 inputs; with tolerance 0, a kept removal leaves no more of
    them wrong than the trained model, and the pruned model's count is the program's."""
    out = pruned_run(
        tmp_path / "hist", **{"train.prune_domain": True, "train.refine_holdout": False}
    )
    records = read_records(out)
    first, attempts = records[0], records[1:]
    assert first["domain_wrong"] == round((1 - first["domain_accuracy"]) * 1554)
    assert any(r["removed"] for r in attempts), "the tiny run should remove some modules"
    for record in attempts:
        judged = record["val_accuracy"] >= first["val_accuracy"]
        if "domain_accuracy" in record:  # measured only where val allowed the removal
            judged = judged and record["domain_wrong"] <= first["domain_wrong"]
        assert record["removed"] == judged
    results = json.loads((out / "results.json").read_text())
    checked = results["verification"]
    assert checked["mode"] == "whole domain" and checked["n_inputs"] == 1554
    wrong = round((1 - checked["sequence_accuracy"]) * checked["n_inputs"])
    assert results["pruning"]["domain_wrong"] == wrong <= first["domain_wrong"]
    header = " ".join((out / "program.py").read_text().split('"""')[1].split())
    assert f"wrong inputs of the domain {first['domain_wrong']} -> {wrong}" in header


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.prune_domain": True}, "set train.refine_holdout=false"),
        ({"train.prune": False, "train.prune_domain": True}, "needs train.prune=true"),
        ({"train.prune_counterexamples": True}, "needs train.prune_domain=true"),
    ],
)
def test_a_domain_guard_without_its_premises_is_refused(tmp_path, overrides, message) -> None:
    config = task_config("hist", {**TINY, **overrides})
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_and_decompile(config, tmp_path / "hist", progress=False)


def test_a_pruning_state_from_before_the_domain_guard_still_resumes(reference, tmp_path):
    """Such a state saved the trained model's val accuracy alone, as a float."""
    run = tmp_path / "old"
    shutil.copytree(reference, run)
    blob = load_torch_file(run / STATE, "state_dict")
    val = blob["reference"]["val_accuracy"]
    blob["reference"] = val
    save_torch_file(run / STATE, blob)
    state = prune_module._State.load(run, load_run(run).load_model())
    assert state is not None and state.reference == {"val_accuracy": val}


def test_a_pruning_state_written_before_the_renaming_still_resumes(reference, tmp_path):
    """Variables were once named ``attn_0_1_outputs``: a pruning state holding such names
    still names the model's modules, and a name the model lacks is refused rather than held
    as nothing (which would quietly bring the module back)."""
    run = tmp_path / "old"
    shutil.copytree(reference, run)
    blob = load_torch_file(run / STATE, "state_dict")
    removed = list(blob["removed"])
    assert removed, "the tiny run should remove some modules"
    blob["order"] = [f"{name}_outputs" for name in blob["order"]]
    blob["removed"] = [f"{name}_outputs" for name in removed]
    save_torch_file(run / STATE, blob)
    model = load_run(run).load_model()
    assert removed_modules(run, model) == removed
    with pytest.raises(ValueError, match="no head or MLP named attn_9_9"):
        hold_removed(model, ["attn_9_9"])
    blob["removed"] = ["attn_9_9"]
    save_torch_file(run / STATE, blob)
    with pytest.raises(RunDirError, match="does not have: attn_9_9"):
        removed_modules(run, model)


@pytest.mark.slow
def test_interrupted_pruning_resumes_to_the_same_result(reference, tmp_path, monkeypatch):
    """Killed in the middle of the attempts, then resumed with `tprog train --resume`."""
    real_attempt, calls = prune_module._attempt, []

    def dying_attempt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_attempt(*args, **kwargs)

    monkeypatch.setattr(prune_module, "_attempt", dying_attempt)
    out = tmp_path / "hist"
    with pytest.raises(KeyboardInterrupt):
        pruned_run(out)
    assert len(read_records(out)) == 4  # step 0 and three attempts
    monkeypatch.setattr(prune_module, "_attempt", real_attempt)
    resume_and_decompile(out, progress=False)
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_prune_tau_below_tau_end_is_refused(tmp_path) -> None:
    config = task_config("hist", {**TINY, "train.prune_tau": 0.001})
    with pytest.raises(ConfigError, match="prune_tau"):
        train_and_decompile(config, tmp_path / "hist", progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The reference run's training, without pruning."""
    return pruned_run(tmp_path_factory.mktemp("trained") / "hist", **{"train.prune": False})


def test_continue_prunes_a_finished_run_as_training_with_pruning_would(
    trained, reference, tmp_path
) -> None:
    before = {path.name: path.read_bytes() for path in trained.iterdir()}
    out = tmp_path / "continued"
    result = tprog("continue", str(trained), "train.prune=true", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    removed = json.loads((reference / "results.json").read_text())["pruning"]["removed"]
    assert f"pruning: {len(removed)} of 6 heads and MLPs removed" in result.stdout
    for name in ("model.pt", PRUNING, "program.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert {path.name: path.read_bytes() for path in trained.iterdir()} == before


def test_pruning_stops_after_its_patience_of_refusals(trained, tmp_path) -> None:
    """With train.prune_patience=1, the first refusal ends the pruning: its attempts are those
    of the same pruning without patience up to it, and the modules after it are reported as not
    tried. (Removals without fine-tuning: more of them are refused, and sooner.)"""
    free = ("train.prune=true", "train.prune_epochs=0")
    full, patient = tmp_path / "full", tmp_path / "patient"
    assert tprog("continue", str(trained), *free, "--out", str(full)).returncode == 0
    attempts = read_records(full)[1:]
    first_refused = next(n for n, record in enumerate(attempts) if not record["removed"])
    assert first_refused < len(attempts) - 1  # modules are left to try after it
    result = tprog("continue", str(trained), *free, "train.prune_patience=1", "--out", str(patient))
    assert result.returncode == 0, result.stderr
    assert read_records(patient)[1:] == attempts[: first_refused + 1]
    pruning = json.loads((patient / "results.json").read_text())["pruning"]
    order = read_records(full)[0]["order"]
    assert pruning["not_tried"] == order[first_refused + 1 :]
    not_tried = len(order) - first_refused - 1
    stopped = f"heads and MLPs tried removed, then stopped with {not_tried} not tried"
    assert stopped in result.stdout  # the CLI and the header say it in the same words
    assert stopped in " ".join((patient / "program.py").read_text().split())


def test_continue_refuses_what_would_change_the_trained_model(trained, reference, tmp_path):
    with pytest.raises(ConfigError, match=re.escape("'train.lr' would change the trained model")):
        continue_run(trained, tmp_path / "a", {"train.lr": 0.1}, progress=False)
    with pytest.raises(ConfigError, match=re.escape("did you mean 'train.prune'?")):
        continue_run(trained, tmp_path / "a", {"train.prun": True}, progress=False)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(reference, unfinished)
    (unfinished / "program.json").unlink()
    with pytest.raises(RunDirError, match="has not finished its pruning; resume it first"):
        continue_run(unfinished, tmp_path / "b", {"train.refine": 1}, progress=False)
    with pytest.raises(RunDirError, match="itself"):
        continue_run(trained, trained, {"train.prune": True}, overwrite=True, progress=False)
    assert (trained / "model.pt").is_file()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    result = tprog("continue", str(tmp_path / "missing"), "--out", str(tmp_path / "c"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_continue_from_a_pruned_run_keeps_its_removals_and_records_where_it_came_from(
    reference, tmp_path
) -> None:
    """Pruned, then refined, then pruned again: a chain of continued runs. The modules the
    first pruning removed stay removed, the second pruning tries only the others, and each run
    says what its model went through before it."""
    before = {path.name: path.read_bytes() for path in reference.iterdir()}
    first_removed = json.loads((reference / "results.json").read_text())["pruning"]["removed"]
    assert first_removed, "the reference pruning removed nothing: nothing to inherit"
    refined = tmp_path / "refined"
    refinement = {"train.refine": 1, "train.refine_epochs": 2, "train.refine_tau": 1.0}
    continue_run(reference, refined, refinement, progress=False)
    assert {path.name: path.read_bytes() for path in reference.iterdir()} == before
    assert not (refined / PRUNING).exists(), "the stages are the overrides' alone"
    lineage = json.loads((refined / "continued_from.json").read_text())
    assert lineage["run"] == str(reference.resolve())
    assert lineage["removed"] == first_removed and lineage["refinement"] is None
    assert lineage["pruning"]["removed"] == first_removed
    assert {module.name for module in load_program(refined).modules}.isdisjoint(first_removed)
    header = " ".join((refined / "program.py").read_text().split())  # unwrapped
    assert "Continued (tprog continue) from the run" in header and "which was pruned" in header

    again = tmp_path / "pruned-again"
    continue_run(refined, again, {"train.prune": True, "train.prune_epochs": 1}, progress=False)
    records = read_records(again)
    assert set(records[0]["order"]) == set(module_names(load_run(again).load_model())) - set(
        first_removed
    )
    second_removed = [record["module"] for record in records[1:] if record["removed"]]
    model = load_run(again).load_model()
    assert removed_modules(again, model) == [*first_removed, *second_removed]
    live = {module.name for module in load_program(again).modules}
    assert live.isdisjoint(first_removed + second_removed)
    lineage = json.loads((again / "continued_from.json").read_text())
    assert lineage["refinement"]["kept_round"] in (0, 1)
    assert lineage["continued_from"]["run"] == str(reference.resolve())


def test_continuing_a_pruned_run_with_no_stage_gives_its_program(reference, tmp_path) -> None:
    out = tmp_path / "same"
    continue_run(reference, out, {}, progress=False)
    assert load_program(out).modules == load_program(reference).modules
    model = load_run(out).load_model()
    assert removed_modules(out, model) == removed_modules(reference, model)
    (out / "continued_from.json").write_text("[]")
    result = tprog("decompile", str(out))
    assert result.returncode == 2 and "continued_from.json is corrupt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
