"""Counterexample-guided refinement: find what the program gets wrong on the task's whole input
domain, add it to the training data, train on, and repeat.

Training sees only the inputs the generator happened to draw, so a program can score 99.9% on
its test split and still be wrong on hundreds of inputs it can receive. After the main schedule,
each of up to ``train.refine`` rounds:

1. runs the hard model, which computes exactly what the program computes, on every input of the
   task's domain (a fresh uniform sample of it when the domain is too large to enumerate, as
   `tprog verify` does);
2. adds every wrong input to the round's counterexamples, which keep those of every earlier
   round (a round trained on this round's mistakes alone forgets the last round's, and rounds
   then swap one set of errors for another); with ``train.refine_holdout`` (the default) val
   and test inputs are never added, so the test accuracy stays a held-out figure and val stays
   fit for model selection;
3. trains ``train.refine_epochs`` more epochs, on the training split plus
   ``train.refine_repeat`` copies of every counterexample, at learning rate
   ``train.refine_lr`` (a tenth of training's: at the end of the schedule the model is nearly
   discrete, and Adam turns the small gradients into full-size steps that undo more than they
   fix), at ``train.tau_end`` or annealed geometrically from ``train.refine_tau`` down to it,
   with ``train.refine_noise=false`` without Gumbel noise, and with
   ``train.refine_straight_through`` taking each choice's argmax going forward (see
   ``Sampling``). Without it the softmax has saturated by the end of the schedule, gradients
   hardly reach the discrete choices, and rounds move little but the classifier and near-ties.

Rounds stop early when nothing that may be added is wrong. A round can also make things worse,
so the run keeps the weights of the round with the fewest wrong inputs it may train on (never
chosen on val/test inputs). Every measurement is one line of ``refinement.jsonl`` (round 0 is the
model as trained); results.json repeats them and names the round kept.

A round checkpoints only at its end, and its new counterexamples are a deterministic function of
the model at its start; those of earlier rounds are kept in ``refinement_inputs.jsonl``. So a
resumed run repeats an interrupted round exactly.

A run continued from a refined one (``tprog continue``: refine, prune, refine again) starts from
the counterexamples of every run in its chain, kept in ``refinement_inherited.jsonl`` (with
``train.refine_inherit``, the default): pruning changes the model, and the inputs it used to get
wrong are the likeliest to break again. Held-out inputs stay out of them as of this run's config.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tprog.data import Dataset
from tprog.domain_check import check_domain, with_counterexamples
from tprog.errors import RunDirError
from tprog.model.program import TransformerProgram
from tprog.prune import keep_removed, removed_modules
from tprog.rundir import (
    MODEL,
    Run,
    keep_log_records,
    load_state,
    load_torch_file,
    read_log,
    save_model,
    save_torch_file,
)
from tprog.tasks.registry import Example
from tprog.train import (
    Session,
    Stage,
    append_line,
    fit,
    hard_predictions,
    split_accuracy,
    tau_schedule,
)

REFINEMENT = "refinement.jsonl"
BEST = "refinement_best.pt"  # the weights of the best round so far
COUNTEREXAMPLES = "refinement_inputs.jsonl"  # per round: the wrong inputs it added
INHERITED = "refinement_inherited.jsonl"  # per earlier run of a chain: its counterexamples


def refine(run: Run, dataset: Dataset, *, progress: bool = True) -> list[dict[str, Any]]:
    """Refine the trained run in ``run.path`` (see the module docstring), continuing from its
    checkpoint, and rewrite model.pt with the best round's weights; returns the round records
    (none if refinement is off)."""
    cfg = run.config.train
    if not cfg.refine:
        return []
    session, done = Session.start(run, dataset, progress=progress, resume=True)
    for group in session.optimizer.param_groups:  # fine-tuning: smaller steps than training
        group["lr"] = cfg.refine_lr
    keep_removed(session.optimizer, session.model, removed_modules(run.path, session.model))
    for log in (REFINEMENT, COUNTEREXAMPLES):
        _keep_records_before(run.path / log, done)
    rounds = _Rounds(session, run, dataset)
    for round_ in range(cfg.refine + 1):
        epoch = cfg.epochs + round_ * cfg.refine_epochs  # the measurement after round_ rounds
        if done > epoch:
            continue  # measured before the run was resumed: its record is in the log
        if not rounds.measure(round_, epoch):
            break
        rounds.train(round_ + 1, epoch, done)
    rounds.best.load_into(session.model)
    save_model(run.path / MODEL, session.model.cpu(), run.config)
    return read_records(run.path)


class _Rounds:
    """Measuring the model on the domain, and training a round on what it gets wrong."""

    def __init__(self, session: Session, run: Run, dataset: Dataset) -> None:
        self.session, self.run, self.dataset = session, run, dataset
        self.cfg = run.config.train
        held_out = (dataset.val, dataset.test) if self.cfg.refine_holdout else ()
        self.held_out = {tuple(x) for split in held_out for x in split.inputs}
        self.best = _Best.resume(run.path)
        # every counterexample so far, in the order found, keyed by its input
        self.counterexamples: dict[tuple[str, ...], Example] = {}
        if self.cfg.refine_inherit:
            inherited = read_counterexamples(run.path / INHERITED)
            self._add([ex for ex in inherited if tuple(ex[0]) not in self.held_out])
        self.n_inherited = len(self.counterexamples)
        self._add(read_counterexamples(run.path / COUNTEREXAMPLES))

    def _add(self, examples: list[Example]) -> list[Example]:
        new = [ex for ex in examples if tuple(ex[0]) not in self.counterexamples]
        self.counterexamples.update((tuple(ex[0]), ex) for ex in new)
        return new

    def measure(self, round_: int, epoch: int) -> bool:
        """Log the model's figures after ``round_`` rounds (0: as trained), offer it as the best
        round, add its trainable wrong inputs to the counterexamples, and say whether another
        round follows."""
        check = check_domain(self.session.model, self.run, self.dataset, round_)
        trainable = [ex for ex in check.wrong if tuple(ex[0]) not in self.held_out]
        last = round_ == self.cfg.refine or not trainable
        new = [] if last else self._add(trainable)
        record = {
            "round": round_,
            "epoch": epoch,
            "domain": check.mode,
            "n_inputs": check.n_inputs,
            "token_accuracy": check.token_accuracy,
            "sequence_accuracy": check.sequence_accuracy,
            "n_wrong": len(check.wrong),
            "n_wrong_trainable": len(trainable),  # outside val/test, with refine_holdout
            "n_added": len(new),  # wrong inputs no earlier round found
            "n_inherited": self.n_inherited,  # counterexamples of the runs continued from
            # what the next round trains on (with the training split)
            "n_counterexamples": 0 if last else len(self.counterexamples),
        }
        for name in ("val", "test"):
            split = getattr(self.dataset, name)
            predicted = hard_predictions(self.session.model, split)
            record[f"{name}_accuracy"] = split_accuracy(predicted, split)
        # The weights first, then the record: a run killed in between measures this round
        # again on resuming, and offers the same weights again.
        self.best.offer(round_, len(trainable), self.session.model)
        if not last:
            append_line(self.run.path / COUNTEREXAMPLES, {"epoch": epoch, "examples": new})
        append_line(self.run.path / REFINEMENT, record)
        return not last

    def train(self, round_: int, start: int, done: int) -> None:
        cfg = self.cfg
        added = list(self.counterexamples.values())
        data = with_counterexamples(self.dataset, added, cfg.refine_repeat, cfg.device)
        steps = cfg.refine_epochs * math.ceil(len(data.ids) / cfg.batch_size)
        tau_start = cfg.tau_end if cfg.refine_tau is None else cfg.refine_tau
        stage = Stage(
            data,
            tau_schedule(tau_start, cfg.tau_end, steps),
            start,
            cfg.refine_epochs,
            cfg.refine_epochs,  # one checkpoint, at the round's end (see the module docstring)
            {"round": round_},
            cfg.refine_noise,
            cfg.refine_straight_through,
        )
        fit(self.session, stage, done)


class _Best:
    """The weights of the round with the fewest trainable wrong inputs (ties: the earlier),
    kept in ``refinement_best.pt`` so that a resumed run keeps the same round.

    Rounds are chosen on the inputs they may train on, never on val/test (with
    ``refine_holdout``), so the test accuracy of the kept round stays held out.
    """

    def __init__(self, path: Path, fewest: int | None) -> None:
        self.path, self.fewest = path, fewest

    @classmethod
    def resume(cls, run_dir: Path) -> _Best:
        records = read_records(run_dir)
        fewest = min((r["n_wrong_trainable"] for r in records), default=None)
        return cls(run_dir / BEST, fewest)

    def offer(self, round_: int, n_wrong: int, model: TransformerProgram) -> None:
        if self.fewest is None or n_wrong < self.fewest:
            save_torch_file(self.path, {"round": round_, "state_dict": model.state_dict()})
            self.fewest = n_wrong

    def load_into(self, model: TransformerProgram) -> None:
        state = load_torch_file(self.path, "state_dict")["state_dict"]
        load_state(model, state, self.path, self.path.parent)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The round records of a run directory, oldest first (none without refinement)."""
    return read_log(Path(run_dir) / REFINEMENT)


def refinement_summary(run_dir: Path) -> dict[str, Any] | None:
    """What results.json says of refinement: every round's record and the round whose weights
    were kept (None without refinement)."""
    records = read_records(run_dir)
    if not records:
        return None
    kept = min(records, key=lambda r: (r["n_wrong_trainable"], r["round"]))
    return {"rounds": records, "kept_round": kept["round"]}


def read_counterexamples(path: Path) -> list[Example]:
    """Every ``(inputs, targets)`` pair of a counterexample log, in the order logged (none if
    there is no log)."""
    return [
        example
        for number, record in enumerate(read_log(path), 1)
        for example in _logged_examples(record, path, number)
    ]


def inheritance(source: Path) -> list[dict[str, Any]]:
    """The records of ``refinement_inherited.jsonl`` for a run continued from ``source``:
    what ``source`` inherited, then ``source``'s own counterexamples, if it has any."""
    path = source / INHERITED  # read through _logged_examples: a corrupt one is named here
    records = [
        {"run": record.get("run"), "examples": _logged_examples(record, path, n)}
        for n, record in enumerate(read_log(path), 1)
    ]
    own = read_counterexamples(source / COUNTEREXAMPLES)
    if own:
        records.append({"run": str(source.resolve()), "examples": own})
    return records


def _logged_examples(record: dict[str, Any], path: Path, number: int) -> list[Example]:
    """The ``(inputs, targets)`` pairs of one record of ``refinement_inputs.jsonl``."""
    examples = record.get("examples")
    if not isinstance(examples, list) or not all(
        isinstance(ex, list) and len(ex) == 2 and all(isinstance(part, list) for part in ex)
        for ex in examples
    ):
        raise RunDirError(
            f"{path} is corrupt: line {number} has no list of [inputs, targets] examples."
        )
    return [(inputs, targets) for inputs, targets in examples]


def _keep_records_before(path: Path, epoch: int) -> None:
    """Drop the records of measurements at or after ``epoch``: a resumed run makes them again."""
    keep_log_records(path, lambda record: record["epoch"] < epoch)
