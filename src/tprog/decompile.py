"""Decompilation: a trained model -> its IR -> the simplified IR -> program.py, each step checked.

The chain of guarantees, all checked here and recorded in results.json:
  * hard model == unsimplified IR, on every train/val/test example;
  * simplified IR == unsimplified IR, on the simplification basis (the task's whole input domain
    when it fits in `SIMPLIFY_MAX_POSITIONS`, else every train/val/test input and a sample of
    the domain that does) and again on everything `tprog.verify` checks;
  * hard model == simplified IR == generated code, on every train/val/test example.
"""

from __future__ import annotations

import json
import platform
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tprog import __version__
from tprog.codegen import load_program_module, program_to_python, write_program
from tprog.codegen_template import RUNTIME_FILE, RUNTIME_SOURCE
from tprog.data import Dataset, build_dataset
from tprog.errors import FaithfulnessError
from tprog.extract import model_to_ir
from tprog.faithful import check_agreement, rows_agree
from tprog.interpret import predict_ids
from tprog.ir import Program
from tprog.model.program import TransformerProgram
from tprog.program_stats import code_lines, learned_lines, module_counts
from tprog.prune import describe_change, describe_removals, pruning_summary
from tprog.readout import readout_summary
from tprog.refine import refinement_summary
from tprog.removal import removal_summary
from tprog.repair import repair_summary
from tprog.rundir import (
    PROGRAM_JSON,
    PROGRAM_PY,
    RESULTS,
    Run,
    read_lineage,
    write_atomic,
    write_json,
)
from tprog.simplify import Basis, simplify
from tprog.train import hard_predictions, split_accuracy
from tprog.verify import VerifyReport, chunk_sizes, verify_for_run
from tprog.vocab import encode_batch

SPLITS = ("train", "val", "test")
PROGRAM_UNSIMPLIFIED_JSON = "program_unsimplified.json"
# Simplify on the whole domain when it has at most this many positions (inputs times the
# context: the hist family's 335,922 inputs are 3.7M); else on the train/val/test inputs and a
# sample of the domain of this many positions (500,000 Dyck-2 inputs), a budget that bounds
# simplification's memory. Train/val/test alone over-represent what the generator favours: a
# rewrite of what none of them reached changed Dyck-2's outputs on about 1 uniform input in
# 20,000; with a uniform sample, on 1 of 3,100,000 further ones; with half of it skewed (below),
# on none of 3,100,000.
SIMPLIFY_MAX_POSITIONS = 8_000_000
# The sample's RNG: a child of `tprog.verify`'s default seed 0, so the sample that verify then
# checks is drawn independently of the basis (and no ``--seed`` of verify repeats it).
_BASIS_SEED = np.random.SeedSequence(0, spawn_key=(1,))


@dataclass(frozen=True)
class Outcome:
    run_dir: Path
    results: dict[str, Any]

    @property
    def program_path(self) -> Path:
        return self.run_dir / PROGRAM_PY


def decompile(
    run: Run, *, dataset: Dataset | None = None, model: TransformerProgram | None = None
) -> Outcome:
    """Extract, simplify and verify the program; write program_unsimplified.json, program.json,
    program.py and results.json; check every link of the chain (module docstring).

    Raises `FaithfulnessError` (after writing results.json) if any check fails.
    """
    model = model if model is not None else run.load_model()
    dataset = dataset if dataset is not None else build_dataset(run.task, run.config)
    # One hard-model pass per split serves both the accuracies and the faithfulness checks.
    predictions = {name: hard_predictions(model, getattr(dataset, name)) for name in SPLITS}
    accuracies = {
        name: split_accuracy(predictions[name], getattr(dataset, name)) for name in SPLITS
    }
    raw = model_to_ir(
        model,
        task=run.config.task,
        vocab=run.vocab.tokens,
        labels=run.labels.tokens,
        meta={"config": json.loads(run.config.to_json()), "tprog_version": __version__},
    )
    raw_agreement = _agreement(raw, predictions, dataset)
    basis = simplification_basis(run, raw, dataset)
    program = simplify(raw, basis)
    report = verify_for_run(
        program, run.config, reference_programs=[(PROGRAM_UNSIMPLIFIED_JSON, raw)]
    )
    size = _size(raw, program)
    write_atomic(run.path / PROGRAM_UNSIMPLIFIED_JSON, raw.to_json())
    write_atomic(run.path / PROGRAM_JSON, program.to_json())
    header = _header(run, program, accuracies, basis, report, size)
    write_program(program, run.path / PROGRAM_PY, header=header, example=_example(program, dataset))
    agreement = check_agreement(
        predictions, program, load_program_module(run.path / PROGRAM_PY), dataset
    )
    results = {
        **{f"{name}_accuracy": accuracies[name] for name in SPLITS},
        "program_test_accuracy": split_accuracy(agreement.ir_predictions["test"], dataset.test),
        "agreement": {"unsimplified_ir": raw_agreement, "ir": agreement.ir, "code": agreement.code},
        "n_examples_checked": agreement.n_examples,
        "simplified_on": basis.description,
        "rewrites_beyond_basis": program.meta.get("rewrites_beyond_basis"),
        "verification": _verification(report),
        "size": size,
        "pruning": pruning_summary(run.path),
        "refinement": refinement_summary(run.path),
        "readout": readout_summary(run.path),
        "repair": repair_summary(run.path),
        "removal": removal_summary(run.path),
        "continued_from": read_lineage(run.path),
        "machine": platform.machine(),
    }
    write_json(run.path / RESULTS, results)
    _raise_unless_faithful(raw_agreement, report, agreement, basis)
    return Outcome(run.path, results)


def simplification_basis(run: Run, program: Program, dataset: Dataset) -> Basis:
    """The inputs simplification must preserve: the whole domain when it is small enough, else
    the train/val/test inputs and, where the task declares a domain, a sample of it."""
    domain = run.task.input_domain(run.config.data)
    size = domain.size() if domain is not None else None
    drawn = SIMPLIFY_MAX_POSITIONS // program.n_ctx
    if size is not None and size <= drawn:
        encoded = [
            encode_batch(rows, program.vocab, program.n_ctx, program.unk)
            for rows in domain.chunks(8192)
        ]
        ids, lengths = _stacked(encoded)
        description = f"the task's whole input domain ({size:,} inputs)"
        return Basis(ids, lengths, description, whole_domain=True)
    splits = [(split.ids, split.lengths) for name in SPLITS for split in [getattr(dataset, name)]]
    ids, lengths = _stacked(splits)
    description = f"the {len(ids):,} train/val/test inputs"
    if domain is None:
        return Basis(ids, lengths, description)
    # Half uniform, half of skewed composition where the domain can draw those: extreme
    # counts (a Dyck-2 prefix of 14 opening brackets) are rare in a uniform sample, and a
    # table entry only they reach made dyck2's program differ from its original.
    sample_skewed = getattr(domain, "sample_skewed", None)
    skewed = drawn // 2 if sample_skewed else 0
    rng = np.random.default_rng(_BASIS_SEED)
    draws = [(domain.sample, drawn - skewed), (sample_skewed, skewed)]
    sampled = [
        encode_batch(draw(rng, n), program.vocab, program.n_ctx, program.unk)
        for draw, total in draws
        for n in chunk_sizes(total)
    ]
    ids, lengths = _stacked([(ids, lengths), *sampled])
    description += f" and {drawn - skewed:,} drawn uniformly from the domain's {size:,}"
    if skewed:
        description += f" and {skewed:,} of skewed symbol frequencies"
    return Basis(ids, lengths, description, token_sets=_token_sets(domain, program))


def _stacked(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One ``(ids, lengths)`` of many, each batch's ids 0-padded to the widest."""
    width = max(ids.shape[1] for ids, _ in batches)
    ids = [np.pad(ids, ((0, 0), (0, width - ids.shape[1]))) for ids, _ in batches]
    return np.concatenate(ids), np.concatenate([lengths for _, lengths in batches])


def _token_sets(domain, program: Program) -> dict[int, list[list[int]]] | None:
    """The domain's `position_tokens` as token ids, None where it has none."""
    if not hasattr(domain, "position_tokens"):
        return None
    index = {token: i for i, token in enumerate(program.vocab)}
    unk = index.get(program.unk) if program.unk is not None else None
    return {
        length: [sorted({index.get(token, unk) for token in tokens} - {None}) for tokens in sets]
        for length, sets in domain.position_tokens().items()
        if length <= program.n_ctx
    }


def _example(program: Program, dataset: Dataset, longest: int = 8) -> list[str]:
    """An input for the program's usage line: the first test input of at most ``longest``
    tokens, or the shortest one."""
    split = dataset.test if len(dataset.test.ids) else dataset.train
    fits = np.flatnonzero(split.lengths <= longest)
    row = fits[0] if len(fits) else int(np.argmin(split.lengths))
    return [program.vocab[i] for i in split.ids[row, : split.lengths[row]]]


def _agreement(program: Program, predictions: dict[str, np.ndarray], dataset: Dataset) -> float:
    """Fraction of train/val/test examples on which ``program`` gives the model's outputs."""
    agree = [
        rows_agree(predict_ids(program, split.ids, split.lengths), predictions[name], split.lengths)
        for name in SPLITS
        for split in [getattr(dataset, name)]
    ]
    return float(np.concatenate(agree).mean())


def _size(raw: Program, program: Program) -> dict[str, Any]:
    source = program_to_python(program)[0]
    return {
        "code_lines": {
            "unsimplified": code_lines(program_to_python(raw)[0]),
            "simplified": code_lines(source),
            "learned": learned_lines(source),  # of the simplified program: program() and co.
            "runtime": code_lines(RUNTIME_SOURCE),  # tprog_runtime.py, beside every program
        },
        "modules": {"unsimplified": module_counts(raw), "simplified": module_counts(program)},
    }


def _verification(report: VerifyReport) -> dict[str, Any]:
    """The headline of a verification report, for results.json."""
    shortest = report.counterexamples[0] if report.counterexamples else None
    return {
        "mode": report.mode,
        "n_inputs": report.n_inputs,
        "domain_size": report.domain_size,
        "token_accuracy": report.token_accuracy,
        "sequence_accuracy": report.sequence_accuracy,
        "n_wrong": report.n_wrong,
        "shortest_counterexample": None if shortest is None else list(shortest.input),
        "simplified_vs_unsimplified": report.references[0].agreement,
        "by_length": [asdict(count) for count in report.by_length],
    }


def _header(
    run: Run,
    program: Program,
    accuracies: dict[str, float],
    basis: Basis,
    report: VerifyReport,
    size: dict[str, Any],
) -> str:
    simplified = size["modules"]["simplified"]
    live = ", ".join(
        f"{simplified[kind]} of {total} {kind}"
        for kind, total in size["modules"]["unsimplified"].items()
        if total
    )
    lines = size["code_lines"]
    checked = "every input" if report.mode == "whole domain" else f"a {report.mode}"
    sentences = [
        f"Learned by tprog {__version__} (seed {run.config.seed}; config in config.json).",
        "Hard-model token accuracy: "
        + ", ".join(f"{split} {accuracies[split]:.4f}" for split in SPLITS)
        + ".",
        f"On {checked} of the task's domain ({report.n_inputs:,} inputs): token accuracy "
        f"{report.token_accuracy:.4f}, whole-sequence accuracy {report.sequence_accuracy:.4f}.",
        f"Live: {live}; {lines['simplified']} code lines ({lines['unsimplified']} before "
        f"simplification), {lines['learned']} of them program() and its predicates and tables. "
        f"The runtime it loads, {RUNTIME_FILE}, the same in every tprog program, has "
        f"{lines['runtime']} code lines.",
        *_continued_sentence(run),
        *_pruned_sentence(run),
        *_refined_sentence(run),
        *_readout_sentence(run),
        *_repair_sentence(run),
        *_removal_sentence(run),
        f"Simplified on {basis.description}: every output there is unchanged."
        + _beyond_basis_sentence(program),
        "Checked equal to the hard model on every train/val/test example.",
    ]
    return "\n".join(textwrap.fill(sentence, width=96) for sentence in sentences)


def _beyond_basis_sentence(program: Program) -> str:
    """Where, beyond a basis that is not the whole domain, the program may differ from the
    unsimplified one."""
    rewrites = program.meta.get("rewrites_beyond_basis")
    if rewrites is None:
        return ""
    entries, rows = rewrites["table_entries"], rewrites["predicate_rows"]
    removed = (
        " Elsewhere outputs may differ from the unsimplified program's only where a module or"
        " classifier term it removed would have mattered"
    )
    if not entries and not rows:
        return removed + ": no table entry or predicate row it rewrote can be reached there."
    return (
        f"{removed}, or through the {entries:,} table entries and {rows:,} predicate rows it"
        " rewrote that some input may reach (an upper bound)."
    )


def _pruned_sentence(run: Run) -> list[str]:
    """A sentence on pruning, when the model was pruned: the program is that of a smaller model
    than its architecture line says."""
    pruning = pruning_summary(run.path)
    if pruning is None:
        return []
    return [
        f"Pruned after training (train.prune): {describe_removals(pruning)}, "
        f"{describe_change(pruning)}."
    ]


def _refined_sentence(run: Run) -> list[str]:
    """A sentence on refinement, when the model was refined: its weights are those of the
    round kept, trained on inputs beyond the training split."""
    refinement = refinement_summary(run.path)
    if refinement is None:
        return []
    rounds = refinement["rounds"]
    domain = rounds[0]["domain"]
    if len(rounds) == 1:  # nothing to train on
        wrong = rounds[0]["n_wrong"]
        why = (
            f"the {wrong} wrong inputs of the {domain} are all held out (val/test)"
            if wrong
            else f"no input of the {domain} was wrong"
        )
        return [f"Refinement (train.refine) trained no round: {why}."]
    wrong = ", ".join(str(record["n_wrong"]) for record in rounds)
    inherited = rounds[0].get("n_inherited", 0)  # older logs do not count them: none
    also = (
        f" and on the {inherited} counterexamples of the runs it continued from"
        if inherited
        else ""
    )
    return [
        f"Refined after training (train.refine): {len(rounds) - 1} rounds of training on the "
        f"inputs the model got wrong{also}; wrong inputs of the {domain} after training and "
        f"after each round: {wrong}; round {refinement['kept_round']} kept."
    ]


def _readout_sentence(run: Run) -> list[str]:
    """A sentence on the classifier's refit (train.refit_readout), when there was one."""
    readout = readout_summary(run.path)
    if readout is None:
        return []
    before, after = readout["wrong_before"], readout["wrong_after"]
    kept = "kept" if readout["kept"] else "not kept: more were wrong than before"
    outcome = f"wrong inputs of the domain {before} -> {after}, {kept}"
    conflicts = readout["n_conflicts"]
    tell = (
        f"; at {conflicts} sets of positions the variables are equal where the labels differ,"
        " which no classifier can tell apart"
        if conflicts
        else ""
    )
    return [
        f"Classifier refit on every input of the domain (train.refit_readout, a linear "
        f"program): {outcome}{tell}."
    ]


def _repair_sentence(run: Run) -> list[str]:
    """A sentence on the predicate edits after the refit (train.refit_edits), when searched."""
    repair = repair_summary(run.path)
    if repair is None:
        return []
    edits = [
        f"{edit['head']}: query {edit['query_variable']} == {edit['query']!r} now selects key "
        f"{edit['key_variable']} == {edit['key']!r}"
        for edit in (kept["edit"] for kept in repair["edits"])
    ]
    found = f"{len(edits)} kept ({'; '.join(edits)})" if edits else "none kept"
    return [
        f"Predicates edited after the refit (train.refit_edits, each edit followed by another "
        f"refit): {len(repair['tried'])} edits tried, {found}; wrong inputs of the domain "
        f"{repair['wrong_before']} -> {repair['wrong_after']}."
    ]


def _removal_sentence(run: Run) -> list[str]:
    """A sentence on the modules removed after the refit (train.refit_removals), when searched."""
    removal = removal_summary(run.path)
    if removal is None:
        return []
    removed = ", ".join(removal["removed"]) or "none"
    return [
        f"Heads and MLPs removed after the refit (train.refit_removals, each removal kept only if "
        f"no more inputs of the domain are then wrong, the classifier refit where needed): "
        f"{len(removal['tried'])} tried, removed: {removed}; wrong inputs of the domain "
        f"{removal['wrong_before']} -> {removal['wrong_after']}."
    ]


def _continued_sentence(run: Run) -> list[str]:
    """A sentence on the run this one continued from, when that run was pruned or refined:
    this program's model went through more than its config says."""
    lineage = read_lineage(run.path)
    if lineage is None:
        return []
    done = []
    removal = lineage.get("removal")
    after_refit = removal["removed"] if removal else []  # also among lineage["removed"]
    if lineage.get("pruning"):
        pruned = len(lineage["removed"]) - len(after_refit)
        done.append(f"pruned ({pruned} heads and MLPs removed)")
    refinement = lineage.get("refinement")
    if refinement:
        rounds = len(refinement["wrong_after_each_round"]) - 1
        done.append(f"refined ({rounds} rounds, round {refinement['kept_round']} kept)")
    readout = lineage.get("readout")
    if readout and readout["kept"]:
        wrong = f"{readout['wrong_before']} -> {readout['wrong_after']} wrong inputs"
        done.append(f"given a refit classifier ({wrong})")
    repair = lineage.get("repair")
    if repair and repair["edits"]:
        wrong = f"{repair['wrong_before']} -> {repair['wrong_after']} wrong inputs"
        n_edits = len(repair["edits"])
        done.append(f"given {n_edits} predicate edit{'s' * (n_edits != 1)} ({wrong})")
    if after_refit:
        done.append(f"cut by {len(after_refit)} heads and MLPs after its refit")
    return [
        f"Continued (tprog continue) from the run {lineage.get('run')}, which was "
        f"{' and '.join(done) or 'pruned or refined'}; what its model went through is in "
        "continued_from.json."
    ]


def _raise_unless_faithful(
    raw_agreement: float, report: VerifyReport, agreement, basis: Basis
) -> None:
    if raw_agreement != 1.0:
        raise FaithfulnessError(
            f"the extracted program differs from the model on {1 - raw_agreement:.6f} of the "
            "train/val/test examples (an extraction bug)."
        )
    # Simplified on part of the domain, the program may differ elsewhere, as its header says.
    for check in report.references if basis.whole_domain else ():
        if check.first_disagreement is not None:
            raise FaithfulnessError(
                "simplification changed the program's output on "
                f"{' '.join(check.first_disagreement.input)!r} (a simplification bug)."
            )
    if agreement.first is not None:
        raise FaithfulnessError(
            f"the program is not faithful (agreement ir={agreement.ir:.6f}, "
            f"code={agreement.code:.6f}): {agreement.first.describe()}"
        )
