"""Counterexample-guided refinement: rounds measured on the whole domain, held-out inputs never
trained on, results recorded, and an interrupted refinement resumes to the identical result."""

import json
import shutil
from itertools import accumulate
from pathlib import Path

import pytest
import torch

from tests.stages import count_gumbel_draws, enter_on_call
from tests.test_cli import tprog
from tprog import refine as refine_module
from tprog import train as train_module
from tprog.data import build_dataset
from tprog.domain_check import check_domain
from tprog.errors import ConfigError, RunDirError
from tprog.model.program import TransformerProgram
from tprog.pipeline import continue_run, load_program, resume_and_decompile, train_and_decompile
from tprog.refine import BEST, COUNTEREXAMPLES, INHERITED, REFINEMENT, read_records
from tprog.rundir import load_run, read_log
from tprog.tasks import task_config
from tprog.verify import verify_program

# hist over inputs of at most 4 symbols: a domain of 6 + 36 + 216 + 1296 = 1,554 inputs, on which
# a 1-layer model trained for 3 epochs is still wrong often enough to refine.
TINY = {
    "data.size": 400,
    "data.max_length": 5,
    "model.n_layers": 1,
    "model.n_heads_cat": 1,
    "model.n_heads_num": 1,
    "model.n_mlps_cat": 0,
    "model.n_mlps_num": 1,
    "model.d_mlp": 8,
    "train.epochs": 3,
    "train.checkpoint_every": 2,
    "train.refine": 2,
    "train.refine_epochs": 2,
    "train.refine_repeat": 3,
    # Steps large enough that the rounds change the model, here for the worse: round 0 is kept.
    "train.refine_lr": 0.05,
    "train.refine_tau": 1.0,
}
OUTPUTS = (
    "model.pt",
    "metrics.jsonl",
    REFINEMENT,
    COUNTEREXAMPLES,
    BEST,
    "results.json",
    "program.json",
)


def refined_run(out: Path, **overrides) -> Path:
    train_and_decompile(task_config("hist", {**TINY, **overrides}), out, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return refined_run(tmp_path_factory.mktemp("refine") / "hist")


def test_rounds_are_recorded_in_the_log_and_results(reference) -> None:
    records = read_records(reference)
    results = json.loads((reference / "results.json").read_text())
    assert results["refinement"]["rounds"] == records
    assert [r["round"] for r in records] == list(range(len(records)))
    assert records[0]["epoch"] == TINY["train.epochs"]
    assert records[0]["n_wrong"] > 0, "the tiny model should leave something to refine"
    for record in records:
        assert record["domain"] == "whole domain" and record["n_inputs"] == 1554
    # Each round trains refine_epochs more epochs, logged with its round number.
    metrics = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    rounds_trained = sum(1 for r in records if r["n_counterexamples"])
    assert len(metrics) == TINY["train.epochs"] + rounds_trained * TINY["train.refine_epochs"]
    assert {m.get("round") for m in metrics[TINY["train.epochs"] :]} <= {1, 2}


def test_rounds_without_noise_draw_none(tmp_path, monkeypatch) -> None:
    """train.refine_noise=false: the rounds train the noise-free relaxation of the hard model,
    while training before them keeps its Gumbel noise."""
    stage = ["training"]
    draws = count_gumbel_draws(monkeypatch, stage)
    enter_on_call(monkeypatch, refine_module, "fit", stage, "rounds")
    out = refined_run(tmp_path / "hist", **{"train.refine_noise": False})
    assert any(r["n_counterexamples"] for r in read_records(out)), "no round was trained"
    assert draws["training"] > 0 and draws["rounds"] == 0


def test_straight_through_rounds_run_the_program_forward(tmp_path, monkeypatch) -> None:
    """train.refine_straight_through: every forward pass of the rounds predicts what the hard
    model predicts, while training before them stays relaxed."""
    agreement = {"training": [], "rounds": []}
    stage = ["training"]
    forward = TransformerProgram.forward

    def compared_forward(model, ids, lengths, sampling=None, tables=None):
        logits = forward(model, ids, lengths, sampling, tables)
        if sampling is not None:
            with torch.no_grad():
                hard = forward(model, ids, lengths).argmax(-1)
            real = torch.arange(ids.shape[1]) < lengths[:, None]  # [B, N]
            agreement[stage[0]].append(torch.equal(logits.argmax(-1)[real], hard[real]))
        return logits

    enter_on_call(monkeypatch, refine_module, "fit", stage, "rounds")
    monkeypatch.setattr(TransformerProgram, "forward", compared_forward)
    out = refined_run(
        tmp_path / "hist",
        **{"train.refine_noise": False, "train.refine_straight_through": True},
    )
    assert any(r["n_counterexamples"] for r in read_records(out)), "no round was trained"
    assert not all(agreement["training"])
    assert agreement["rounds"] and all(agreement["rounds"])


def kept_record(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return results["refinement"]["rounds"][results["refinement"]["kept_round"]]


def test_the_kept_round_has_the_fewest_trainable_counterexamples(reference) -> None:
    records, kept = read_records(reference), kept_record(reference)
    assert kept["n_wrong_trainable"] == min(r["n_wrong_trainable"] for r in records)
    assert all(r["n_wrong_trainable"] > kept["n_wrong_trainable"] for r in records[: kept["round"]])
    # model.pt holds the kept round's weights, whichever round came last.
    best = torch.load(reference / BEST, weights_only=True)
    assert best["round"] == kept["round"]
    model = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(model[name], best["state_dict"][name]) for name in model)


def test_the_decompiled_program_is_the_kept_round(reference) -> None:
    run = load_run(reference)
    report = verify_program(load_program(reference), run.task, run.config.data)
    kept = kept_record(reference)
    assert report.n_wrong == kept["n_wrong"]
    assert report.token_accuracy == pytest.approx(kept["token_accuracy"])
    results = json.loads((reference / "results.json").read_text())
    assert results["test_accuracy"] == pytest.approx(kept["test_accuracy"])


def test_the_program_header_gives_every_rounds_wrong_inputs(reference) -> None:
    records, kept = read_records(reference), kept_record(reference)
    docstring = " ".join((reference / "program.py").read_text().split('"""')[1].split())
    wrong = ", ".join(str(r["n_wrong"]) for r in records)
    assert (
        f"Refined after training (train.refine): {len(records) - 1} rounds of training on the "
        f"inputs the model got wrong; wrong inputs of the whole domain after training and after "
        f"each round: {wrong}; round {kept['round']} kept."
    ) in docstring


def test_held_out_inputs_are_never_trained_on(reference) -> None:
    run = load_run(reference)
    dataset = build_dataset(run.task, run.config)
    held_out = {tuple(x) for split in (dataset.val, dataset.test) for x in split.inputs}
    check = check_domain(run.load_model(), run, dataset, 0)
    trainable = [x for x, _ in check.wrong if tuple(x) not in held_out]
    assert len(trainable) < len(check.wrong), "the domain check should also find held-out inputs"
    kept = kept_record(reference)
    assert (kept["n_wrong"], kept["n_wrong_trainable"]) == (len(check.wrong), len(trainable))
    for record in read_records(reference):
        assert record["n_added"] <= record["n_wrong_trainable"]
    for record in read_log(reference / COUNTEREXAMPLES):
        assert not held_out & {tuple(inputs) for inputs, _ in record["examples"]}


def test_counterexamples_accumulate_over_rounds(reference) -> None:
    """A round trains on what every earlier round got wrong, not only the last: each round's
    new inputs are logged once, and the set a round trains on only grows."""
    records = read_records(reference)
    added = read_log(reference / COUNTEREXAMPLES)
    trained = [r for r in records if r["n_counterexamples"]]
    assert len(trained) == len(added) >= 2, "the tiny run should train at least two rounds"
    inputs = [tuple(x) for record in added for x, _ in record["examples"]]
    assert len(inputs) == len(set(inputs)), "an input is added in one round only"
    totals = [r["n_counterexamples"] for r in trained]
    assert totals == list(accumulate(r["n_added"] for r in trained))
    assert totals == list(accumulate(len(record["examples"]) for record in added))


def logged_inputs(log: Path) -> set[tuple[str, ...]]:
    """The inputs of every record of a counterexample log."""
    return {tuple(inputs) for record in read_log(log) for inputs, _ in record["examples"]}


@pytest.fixture
def trained_on(monkeypatch) -> list[set[tuple[str, ...]]]:
    """The inputs of the counterexamples each refinement round trains on, round by round."""
    real, rounds = refine_module.with_counterexamples, []

    def recording(dataset, added, repeat, device):
        rounds.append({tuple(inputs) for inputs, _ in added})
        return real(dataset, added, repeat, device)

    monkeypatch.setattr(refine_module, "with_counterexamples", recording)
    return rounds


def test_each_round_trains_on_every_earlier_rounds_counterexamples(tmp_path, trained_on) -> None:
    run_dir = refined_run(tmp_path / "hist")
    logged = [{tuple(x) for x, _ in r["examples"]} for r in read_log(run_dir / COUNTEREXAMPLES)]
    assert len(trained_on) == len(logged) >= 2
    for round_, inputs in enumerate(trained_on):
        assert inputs == set().union(*logged[: round_ + 1])


def test_without_holdout_every_counterexample_is_added(tmp_path) -> None:
    run_dir = refined_run(tmp_path / "hist", **{"train.refine": 1, "train.refine_holdout": False})
    first = read_records(run_dir)[0]
    assert first["n_added"] == first["n_wrong_trainable"] == first["n_wrong"] > 0


def refined_run_killed_in_round_2(out: Path, monkeypatch) -> None:
    """A refined run in ``out`` killed inside round 2, so that its checkpoint is at the end of
    round 1 (training's epochs are left as they were afterwards)."""
    real_epoch, calls = train_module._train_epoch, []

    def dying_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == TINY["train.epochs"] + TINY["train.refine_epochs"] + 1:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        refined_run(out)
    monkeypatch.setattr(train_module, "_train_epoch", real_epoch)


@pytest.mark.slow
def test_interrupted_refinement_resumes_to_the_same_result(reference, tmp_path, monkeypatch):
    out = tmp_path / "hist"
    refined_run_killed_in_round_2(out, monkeypatch)
    assert not (out / "results.json").exists()
    resume_and_decompile(out, progress=False)
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_a_corrupt_counterexample_log_is_named_on_resuming(tmp_path, monkeypatch):
    out = tmp_path / "hist"
    refined_run_killed_in_round_2(out, monkeypatch)
    (out / COUNTEREXAMPLES).write_text('{"epoch": 3}\n')  # JSON, but no examples
    with pytest.raises(RunDirError, match=rf"{COUNTEREXAMPLES} is corrupt: line 1 has no list"):
        resume_and_decompile(out, progress=False)


def test_refine_tau_below_tau_end_is_refused(tmp_path) -> None:
    config = task_config("hist", {**TINY, "train.refine_tau": 0.001})
    with pytest.raises(ConfigError, match="refine_tau"):
        train_and_decompile(config, tmp_path / "hist", progress=False)


def test_the_cli_reports_each_round_and_the_round_kept(tmp_path) -> None:
    overrides = [f"{key}={value}" for key, value in TINY.items()]
    result = tprog("train", "hist", "--out", str(tmp_path / "hist"), "--quiet", *overrides)
    assert result.returncode == 0, result.stderr
    records = read_records(tmp_path / "hist")
    wrong = " -> ".join(str(r["n_wrong"]) for r in records)
    kept = json.loads((tmp_path / "hist" / "results.json").read_text())["refinement"]["kept_round"]
    assert f"refinement: inputs wrong after each round {wrong}; kept round {kept}" in result.stdout


def test_a_continued_run_starts_from_the_counterexamples_of_its_chain(
    reference, tmp_path, trained_on
) -> None:
    """Refined, continued and refined again, twice: each run's rounds train on the
    counterexamples of every run before it in the chain as well as their own; with
    train.refine_inherit=false, on their own alone."""
    again = {"train.refine": 1, "train.refine_epochs": 1, "train.refine_tau": 1.0}
    first = logged_inputs(reference / COUNTEREXAMPLES)

    second = tmp_path / "second"
    continue_run(reference, second, again, progress=False)
    inherited = read_log(second / INHERITED)
    assert [record["run"] for record in inherited] == [str(reference.resolve())]
    assert logged_inputs(second / INHERITED) == first
    assert {r["n_inherited"] for r in read_records(second)} == {len(first)}
    assert trained_on[-1] >= first, "the first round of the continued run trains on them"
    own = logged_inputs(second / COUNTEREXAMPLES)
    assert trained_on[-1] == first | own

    third = tmp_path / "third"
    continue_run(second, third, again, progress=False)
    runs = [record["run"] for record in read_log(third / INHERITED)]
    assert runs == [str(reference.resolve()), str(second.resolve())][: 1 + bool(own)]
    assert trained_on[-1] >= first | own
    docstring = " ".join((third / "program.py").read_text().split())
    n_inherited = read_records(third)[0]["n_inherited"]
    assert f"and on the {n_inherited} counterexamples of the runs it continued from;" in docstring

    alone = tmp_path / "alone"
    continue_run(reference, alone, {**again, "train.refine_inherit": False}, progress=False)
    assert {r["n_inherited"] for r in read_records(alone)} == {0}
    assert trained_on[-1] == logged_inputs(alone / COUNTEREXAMPLES)


def test_inherited_counterexamples_that_this_run_holds_out_are_left_out(tmp_path) -> None:
    source = refined_run(tmp_path / "hist", **{"train.refine": 1, "train.refine_holdout": False})
    dataset = build_dataset(load_run(source).task, load_run(source).config)
    held_out = {tuple(x) for split in (dataset.val, dataset.test) for x in split.inputs}
    logged = logged_inputs(source / COUNTEREXAMPLES)
    assert logged & held_out, "the source should have trained on held-out inputs"
    out = tmp_path / "held-out"
    continue_run(source, out, {"train.refine": 1, "train.refine_epochs": 1}, progress=False)
    assert read_records(out)[0]["n_inherited"] == len(logged - held_out)


def test_a_corrupt_inherited_log_is_named_before_anything_is_written(reference, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(reference, source)
    (source / INHERITED).write_text('{"run": "x", "examples": "none"}\n')
    out = tmp_path / "continued"
    with pytest.raises(RunDirError, match=rf"{source / INHERITED} is corrupt: line 1"):
        continue_run(source, out, {"train.refine": 1}, progress=False)
    assert not out.exists()
