"""Pruning: a shorter program from a trained one, one head or MLP at a time.

Simplification (`tprog.simplify`) only removes what provably never matters. A trained Transformer
Program uses every module a little: at the Table 1 configuration no module of sort can be
removed without changing some predictions, so its program stays 36 modules long. Pruning
changes what is learned instead, and keeps the change only where validation says it costs
nothing. With ``train.prune``, after training:

1. every module is scored by the hard model's val accuracy with that module removed;
2. in that order, least missed first, each module is removed and the model fine-tuned for
   ``train.prune_epochs`` epochs (learning rate ``train.prune_lr``, temperature annealed from
   ``train.prune_tau`` to ``train.tau_end``, with Gumbel noise unless ``train.prune_noise`` is
   false) with every module removed so far still removed;
3. the removal is kept if val accuracy is then at least the trained model's less
   ``train.prune_tolerance``; otherwise the model goes back to its state before the attempt.

Val cannot see what a removal costs on inputs it hardly holds: reverse's val split has few
short inputs, and pruning reverse (8+8 heads, seed 0) by val alone left 306 of its 19,530 inputs
wrong where the trained model had 85. With ``train.prune_domain``, a removal must also leave the
hard model's whole-input accuracy on the task's domain (the inputs `tprog verify` checks,
encoded once) at least the trained model's less the same tolerance: with tolerance 0, no more
of the domain's inputs are wrong than the trained model got wrong (that run: 82). Fine-tuning
is tried when either test fails.

That fine-tuning trains the relaxation on the training split, which is what training did; it
does not train on what the guard judges, and at a low temperature its gradients hardly reach
the discrete choices. Pruning Table 1 sort (seed 1, refined to be right on all 19,530 inputs),
removing ``num_mlp_1_0`` left 414 inputs wrong, and 3 epochs of it 714. Two switches make it a
repair, as refinement's rounds are:

  * ``train.prune_straight_through``: each choice is its argmax going forward and its softmax
    at the fine-tuning's temperature going back (`Sampling`), so it trains the program itself;
  * ``train.prune_counterexamples`` (needs ``train.prune_domain``): before each epoch the
    domain is checked; the epoch trains on the training split and ``train.refine_repeat``
    copies of every input the model got wrong before an epoch of this attempt, and the
    fine-tuning stops early once the removal is within tolerance (`_Repair`). Records gain
    ``epochs`` and ``counterexamples`` (distinct inputs trained on).

With both (``train.prune_tau=0.1``, ``train.prune_lr=0.001``, 6 epochs at most) the same
pruning mended its first removals to 3 to 6 wrong inputs (``num_mlp_1_0``: 53 to 3 in 3
epochs), and kept 4 at tolerance 0.0003 (`results/refinement/`, 2026-12-05).

Later attempts cost the most and are kept the least: each module is missed more than the one
before, and a repair that fails piles up counterexamples (a second pass over that sort model
kept 1 removal, its second attempt, then refused 30 in a row, up to 5 minutes each).
``train.prune_patience=K`` stops pruning once K removals in a row were refused; the modules
not tried stay, and ``results.json["pruning"]["not_tried"]`` lists them.

A module is *removed* by forbidding every later read of its variable (its read logits are held
at -1e4, far below any learned logit, so no Gumbel sample or argmax picks it) and zeroing its
classifier weights. The network keeps its shape; the module just no longer matters, and
`simplify.remove_dead_modules` then drops it from the program, exactly. Refinement after
pruning keeps the same modules removed (`keep_removed`), and so does a run that `tprog continue`
started from a pruned one: pruning there tries only the modules that are left.

Every attempt is one line of ``pruning.jsonl`` (step 0 is the trained model). Attempts use
random generators of their own, seeded by the run's seed and the step, and the state after
each attempt is kept in ``pruning_state.pt``, so an interrupted run resumes to the same
result. The pruned model replaces the end-of-training checkpoint, which is where refinement
starts.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tprog.checkpoint import CHECKPOINT, save_checkpoint
from tprog.config import RunConfig, TrainConfig
from tprog.data import Dataset
from tprog.domain_check import DomainInputs, with_counterexamples
from tprog.errors import RunDirError
from tprog.ir import current_name
from tprog.model.program import TransformerProgram
from tprog.model.sampling import Sampling
from tprog.rundir import (
    LINEAGE,
    MODEL,
    REMOVAL,
    Run,
    keep_log_records,
    load_state,
    load_torch_file,
    read_json_if_present,
    read_lineage,
    read_log,
    save_model,
    save_torch_file,
)
from tprog.tasks.registry import Example
from tprog.train import (
    Session,
    Tensors,
    append_line,
    hard_predictions,
    new_optimizer,
    optimise_epoch,
    sequence_loss,
    split_accuracy,
    tau_schedule,
)

PRUNING = "pruning.jsonl"
STATE = "pruning_state.pt"  # the model and modules removed after the last attempt
FORBIDDEN = -1e4  # read logit of a removed module's variable


def prune(run: Run, dataset: Dataset, *, progress: bool = True) -> list[dict[str, Any]]:
    """Prune the trained run in ``run.path`` (see the module docstring), leaving the pruned
    model in model.pt and the end-of-training checkpoint; returns the attempt records (none if
    pruning is off)."""
    cfg = run.config.train
    if not cfg.prune:
        return []
    session, _ = Session.start(run, dataset, progress=progress, resume=True)
    judge = _Judge(run, dataset)
    state = _State.load(run.path, session.model)
    if state is None:  # step 0: measure the trained model and fix the order of attempts
        _keep_records_through(run.path / PRUNING, -1)
        state, record = _State.first(session.model, judge, inherited_removed(run.path))
        append_line(run.path / PRUNING, record)
        state.save(run.path, session.model)
    else:
        load_state(session.model, state.weights, run.path / STATE, run.path)
        _keep_records_through(run.path / PRUNING, state.step)
    attempts = tqdm(
        state.order[state.step :],
        desc=f"{run.config.task}: pruning",
        unit="module",
        disable=not progress,
        leave=False,
    )
    # Modules are tried least missed first: once several removals in a row were refused, the
    # rest, each missed more, seldom go, and every one of them costs a fine-tuning.
    refused = _refused_in_a_row(read_records(run.path)[1:])  # a resumed run's, so far
    for module in attempts:
        if cfg.prune_patience and refused >= cfg.prune_patience:
            attempts.close()
            break
        record = _attempt(session, dataset, judge, state, module)
        append_line(run.path / PRUNING, record)
        state.save(run.path, session.model)
        refused = 0 if record["removed"] else refused + 1
    if not state.finished:
        # The pruned model is where refinement (and a resumed run) starts, with training's
        # optimiser state, as without pruning: fresh Adam moments would turn refinement's
        # first small gradients into full-size steps (see tprog.refine).
        save_checkpoint(
            run.path / CHECKPOINT,
            epoch=cfg.epochs,
            config_json=run.config.to_json(),
            model=session.model,
            optimizer=session.optimizer,
            generators=session.generators,
        )
        save_model(run.path / MODEL, session.model.cpu(), run.config)
        state.finished = True
        state.save(run.path, session.model)
    return read_records(run.path)


@dataclass
class _State:
    """Where pruning stands: the attempt order, how many attempts are done, what was removed,
    and (when read back for resuming) the weights after the last attempt."""

    order: list[str]
    step: int  # attempts done
    removed: list[str]
    reference: dict[str, float]  # the trained model's figures (see _Judge.figures)
    weights: dict[str, torch.Tensor] | None = None
    finished: bool = False

    @classmethod
    def first(
        cls, model: TransformerProgram, judge: _Judge, inherited: list[str]
    ) -> tuple[_State, dict[str, Any]]:
        """Score every module not ``inherited`` removed by val accuracy without it; the least
        missed is tried first (ties: in creation order). Returns the state and the record of
        step 0."""
        names = [name for name in module_names(model) if name not in inherited]
        scores = {}
        for name in names:
            trial = removed_copy(model, [*inherited, name])
            scores[name] = judge.val_accuracy(trial)
        order = sorted(names, key=lambda name: -scores[name])  # sorted() is stable
        state = cls(order, 0, list(inherited), judge.figures(model))
        record = {
            "step": 0,
            **state.reference,
            "order": order,
            "val_without": [scores[name] for name in order],
        }
        return state, record

    @classmethod
    def load(cls, run_dir: Path, model: TransformerProgram) -> _State | None:
        """The state saved in ``run_dir`` (None if pruning has not started), checked to name
        only heads and MLPs that ``model`` has."""
        path = run_dir / STATE
        if not path.is_file():
            return None
        blob = load_torch_file(path, "state_dict")
        try:
            state = cls(
                [current_name(name) for name in blob["order"]],
                int(blob["step"]),
                [current_name(name) for name in blob["removed"]],
                _reference(blob["reference"]),
                blob["state_dict"],
                bool(blob["finished"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise RunDirError(f"{path} is corrupt (its pruning state is unusable).") from None
        unknown = sorted(set(state.order + state.removed) - set(module_names(model)))
        if unknown:
            raise RunDirError(
                f"{path} names heads or MLPs this run's model does not have: {', '.join(unknown)}."
            )
        return state

    def save(self, run_dir: Path, model: TransformerProgram) -> None:
        save_torch_file(
            run_dir / STATE,
            {
                "order": self.order,
                "step": self.step,
                "removed": self.removed,
                "reference": self.reference,
                "state_dict": model.state_dict(),
                "finished": self.finished,
            },
        )


def _attempt(
    session: Session, dataset: Dataset, judge: _Judge, state: _State, module: str
) -> dict[str, Any]:
    """Try removing ``module``: keep the removal if the model stays within tolerance, with or
    without fine-tuning; either way advance ``state`` and return the attempt's record."""
    cfg = session.config.train
    state.step += 1
    removed = [*state.removed, module]
    trial = removed_copy(session.model, removed)
    figures, wrong = judge.measure(trial, state.reference)
    record: dict[str, Any] = {"step": state.step, "module": module}
    record |= {f"{name.removesuffix('_accuracy')}_without": x for name, x in figures.items()}
    within = judge.within(figures, state.reference)
    if not within and cfg.prune_epochs:
        if cfg.prune_counterexamples:
            repair = _Repair(judge, trial, dataset, state.reference, cfg, (figures, wrong))
            record["train_loss"] = _fine_tune(
                trial, repair.next_data, removed, session.config, state.step
            )
            record |= {"epochs": repair.epochs, "counterexamples": len(repair.seen)}
            # A repair that stopped early has just measured the model as it is now.
            figures = (repair.measured or judge.measure(trial, state.reference))[0]
        else:
            train = Tensors.of(dataset.train, cfg.device)
            record["train_loss"] = _fine_tune(
                trial, lambda: train, removed, session.config, state.step
            )
            figures = judge.figures(trial, state.reference)
        within = judge.within(figures, state.reference)
    record |= figures
    record["removed"] = within
    if within:
        session.model.load_state_dict(trial.state_dict())
        state.removed = removed
    return record


class _Judge:
    """What a removal is judged on: val accuracy and, with ``train.prune_domain``, the share
    of the domain's inputs the hard model gets wholly right (``domain_accuracy``)."""

    def __init__(self, run: Run, dataset: Dataset) -> None:
        self.run, self.dataset = run, dataset
        self.tolerance = run.config.train.prune_tolerance

    @functools.cached_property
    def domain(self) -> DomainInputs | None:
        """The domain's inputs, encoded on first use (a resumed, finished pruning needs none);
        where the domain is sampled, refinement's round-0 sample."""
        if not self.run.config.train.prune_domain:
            return None
        rng = np.random.default_rng([self.run.config.seed, 0])
        return DomainInputs(self.run, self.dataset, rng)

    def wrong(self, model: TransformerProgram) -> list[Example]:
        """The inputs of the domain that ``model`` gets wrong, with their targets (none
        without ``train.prune_domain``, which ``train.prune_counterexamples`` needs)."""
        return self.domain.check(model).wrong if self.domain is not None else []

    def val_accuracy(self, model: TransformerProgram) -> float:
        return split_accuracy(hard_predictions(model, self.dataset.val), self.dataset.val)

    def figures(
        self, model: TransformerProgram, reference: dict[str, float] | None = None
    ) -> dict[str, float]:
        """The model's figures; the domain's are left out when val alone already fails
        ``reference`` (checking the domain costs a forward pass over all of it)."""
        return self.measure(model, reference)[0]

    def measure(
        self, model: TransformerProgram, reference: dict[str, float] | None = None
    ) -> tuple[dict[str, float], list[Example] | None]:
        """`figures`, and the domain's inputs the model gets wrong where it checked them."""
        figures = {"val_accuracy": self.val_accuracy(model)}
        val_fails = reference is not None and not self.within(
            figures, {"val_accuracy": reference["val_accuracy"]}
        )
        if self.domain is None or val_fails:
            return figures, None
        check = self.domain.check(model)
        figures["domain_accuracy"] = check.sequence_accuracy
        figures["domain_wrong"] = len(check.wrong)
        return figures, check.wrong

    def within(self, figures: dict[str, float], reference: dict[str, float]) -> bool:
        """Whether every accuracy that ``reference`` has is at least its value less the
        tolerance in ``figures`` (a figure not measured fails)."""
        return all(
            figures.get(name, -math.inf) >= value - self.tolerance
            for name, value in reference.items()
            if name.endswith("_accuracy")
        )


def _reference(saved: Any) -> dict[str, float]:
    """The trained model's figures from a pruning state (one written before the domain guard
    saved val accuracy alone, as a float)."""
    if isinstance(saved, dict):
        return {str(name): float(value) for name, value in saved.items()}
    return {"val_accuracy": float(saved)}


@dataclass
class _Repair:
    """What each epoch of a fine-tuning with ``train.prune_counterexamples`` trains on: the
    training split and ``train.refine_repeat`` copies of every input of the domain that the
    model got wrong before an epoch of this attempt, as refinement's rounds do; nothing (the
    fine-tuning stops) once the model is within tolerance again."""

    judge: _Judge
    model: TransformerProgram
    dataset: Dataset
    reference: dict[str, float]
    cfg: TrainConfig
    # The model's figures and wrong inputs (`_Judge.measure`) where already taken as it is now:
    # before the first epoch, by the attempt; after the last, where the repair stopped early.
    measured: tuple[dict[str, float], list[Example] | None] | None
    seen: dict[tuple[str, ...], Example] = field(default_factory=dict)  # input -> example
    epochs: int = 0

    def next_data(self) -> Tensors | None:
        figures, wrong = self.measured or self.judge.measure(self.model, self.reference)
        self.measured = figures, wrong
        if self.judge.within(figures, self.reference):
            return None
        for example in self.judge.wrong(self.model) if wrong is None else wrong:
            self.seen.setdefault(tuple(example[0]), example)
        self.epochs += 1
        self.measured = None  # the epoch changes the model
        added = list(self.seen.values())
        return with_counterexamples(self.dataset, added, self.cfg.refine_repeat, self.cfg.device)


def _fine_tune(
    model: TransformerProgram,
    epoch_data: Callable[[], Tensors | None],
    removed: list[str],
    config: RunConfig,
    step: int,
) -> float:
    """Up to ``prune_epochs`` epochs with ``removed`` held removed, each on what
    ``epoch_data()`` gives then (None: stop); returns the last epoch's mean loss. Generators
    are seeded by (seed, step): an attempt is repeatable."""
    cfg = config.train
    device = next(model.parameters()).device
    shuffle, gumbel = (
        torch.Generator(device=kind).manual_seed(_seed(config.seed, step, stream))
        for stream, kind in enumerate(("cpu", device.type))
    )
    optimizer = new_optimizer(model, cfg.prune_lr)
    keep_removed(optimizer, model, removed)
    loss = math.nan
    for epoch in range(cfg.prune_epochs):
        data = epoch_data()
        if data is None:
            break
        # tau falls geometrically over all epochs; this epoch takes its share of the steps.
        steps = math.ceil(len(data.ids) / cfg.batch_size)
        taus = tau_schedule(cfg.prune_tau, cfg.tau_end, cfg.prune_epochs * steps)
        taus = taus[epoch * steps : (epoch + 1) * steps]

        def batch_loss(batch: torch.Tensor, number: int, data=data, taus=taus) -> torch.Tensor:
            sampling = Sampling(
                float(taus[number]), gumbel, cfg.prune_noise, cfg.prune_straight_through
            )
            logits = model(data.ids[batch], data.lengths[batch], sampling)
            return sequence_loss(logits, data.targets[batch])

        loss = optimise_epoch(model, optimizer, data, cfg.batch_size, shuffle, batch_loss)
    model.eval()
    return loss


def module_names(model: TransformerProgram) -> list[str]:
    """The variable of every head and MLP, in creation order (inputs are never removed)."""
    return [var.name for var in model.shape.layout.in_creation_order() if var.layer >= 0]


def _removal_masks(
    model: TransformerProgram, removed: list[str]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """(parameter, entries to hold, value to hold them at) for every parameter that a removed
    module's variable touches: each read that could pick it, and its classifier weights."""
    unknown = sorted(set(removed) - set(module_names(model)))
    if unknown:  # holding nothing would quietly bring the module back
        raise ValueError(f"the model has no head or MLP named {', '.join(unknown)}.")
    layout = model.shape.layout
    stacks = {
        "categorical": {var.name: var.index for var in layout.categorical()},
        "numerical": {var.name: var.index for var in layout.numerical()},
    }

    def columns(logits: torch.Tensor, kind: str) -> torch.Tensor:
        # A read's options are the first variables of its stack, in stack order.
        mask = torch.zeros_like(logits, dtype=torch.bool)  # [reads, options]
        for name in removed:
            index = stacks[kind].get(name)
            if index is not None and index < logits.shape[1]:
                mask[:, index] = True
        return mask

    for block in model.blocks:
        reads = [
            (block.cat_attn, "read", "categorical"),
            (block.num_attn, "read", "categorical"),  # query and key
            (block.num_attn, "read_value", "numerical"),
            (block.cat_mlp, "read", "categorical"),
            (block.num_mlp, "read", "numerical"),
        ]
        for layer, attribute, kind in reads:
            if layer is not None:
                logits = getattr(layer, attribute).logits
                yield logits, columns(logits, kind), FORBIDDEN
    for weights, kind in ((model.w_cat, "categorical"), (model.w_num, "numerical")):
        mask = torch.zeros_like(weights, dtype=torch.bool)  # [variables, ...]
        for name in removed:
            if name in stacks[kind]:
                mask[stacks[kind][name]] = True
        yield weights, mask, 0.0


@torch.no_grad()
def hold_removed(model: TransformerProgram, removed: list[str]) -> None:
    """Set the parameters that ``removed`` touch to the values that remove them."""
    for parameter, mask, value in _removal_masks(model, removed):
        parameter.masked_fill_(mask, value)


def keep_removed(
    optimizer: torch.optim.Optimizer, model: TransformerProgram, removed: list[str]
) -> None:
    """Hold ``removed`` removed after every step of ``optimizer`` (Adam's moments would
    otherwise move the held entries, and a zeroed classifier weight has a gradient)."""
    if not removed:
        return
    masks = list(_removal_masks(model, removed))

    @torch.no_grad()
    def hold(*_: Any) -> None:
        for parameter, mask, value in masks:
            parameter.masked_fill_(mask, value)

    hold()
    optimizer.register_step_post_hook(hold)


def removed_modules(run_dir: Path, model: TransformerProgram) -> list[str]:
    """The modules of ``model`` that a finished pruning removed, those removed before a
    continued run (`inherited_removed`) and after the classifier's refit (`tprog.removal`)
    included; none without either."""
    removal = read_json_if_present(Path(run_dir) / REMOVAL)
    later = removal["removed"] if removal else []
    state = _State.load(Path(run_dir), model)
    if state is not None and state.finished:
        return state.removed + later  # it started from the inherited ones
    inherited = inherited_removed(run_dir)
    unknown = sorted(set(inherited) - set(module_names(model)))
    if unknown:
        raise RunDirError(
            f"{Path(run_dir) / LINEAGE} names heads or MLPs this run's model does not have: "
            f"{', '.join(unknown)}."
        )
    return inherited + later


def inherited_removed(run_dir: Path) -> list[str]:
    """The modules that the pruned run a continued run started from had removed: they stay
    removed, and pruning tries only the others."""
    lineage = read_lineage(run_dir)
    return [current_name(str(name)) for name in lineage["removed"]] if lineage else []


def _refused_in_a_row(attempts: list[dict[str, Any]]) -> int:
    """How many of the last ``attempts`` records were refused, counting back to a kept one."""
    refused = 0
    for record in reversed(attempts):
        if record["removed"]:
            break
        refused += 1
    return refused


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The attempt records of a run directory, step 0 first (none without pruning)."""
    return read_log(Path(run_dir) / PRUNING)


def pruning_summary(run_dir: Path) -> dict[str, Any] | None:
    """What results.json says of pruning (None without it)."""
    records = read_records(run_dir)
    if not records:
        return None
    first, attempts = records[0], records[1:]
    kept = [r for r in attempts if r["removed"]]
    last = kept[-1] if kept else first
    summary = {
        "trained_val_accuracy": first["val_accuracy"],
        "val_accuracy": last["val_accuracy"],
        "removed": [r["module"] for r in kept],
        "attempts": attempts,
        # modules never tried: train.prune_patience stopped the pruning first
        "not_tried": first["order"][len(attempts) :],
    }
    if "domain_wrong" in first:  # train.prune_domain
        summary |= {
            "trained_domain_wrong": first["domain_wrong"],
            "domain_wrong": last["domain_wrong"],
        }
    return summary


def describe_removals(pruning: dict[str, Any]) -> str:
    """What pruning removed, from `pruning_summary`: "4 of 36 heads and MLPs removed", and when
    ``train.prune_patience`` stopped it, how many it never tried."""
    removed, tried = len(pruning["removed"]), len(pruning["attempts"])
    not_tried = len(pruning.get("not_tried", []))
    if not not_tried:
        return f"{removed} of {tried} heads and MLPs removed"
    return (
        f"{removed} of the {tried} heads and MLPs tried removed, then stopped with {not_tried} "
        "not tried (train.prune_patience refusals in a row)"
    )


def describe_change(pruning: dict[str, Any]) -> str:
    """What pruning cost, from `pruning_summary`: "val accuracy 0.9970 -> 0.9979", and with
    the domain guard ", wrong inputs of the domain 85 -> 82"."""
    text = f"val accuracy {pruning['trained_val_accuracy']:.4f} -> {pruning['val_accuracy']:.4f}"
    if "domain_wrong" in pruning:  # train.prune_domain
        text += (
            f", wrong inputs of the domain {pruning['trained_domain_wrong']} -> "
            f"{pruning['domain_wrong']}"
        )
    return text


def removed_copy(model: TransformerProgram, removed: list[str]) -> TransformerProgram:
    """A copy of ``model``, in eval mode, with the modules ``removed`` removed."""
    trial = copy.deepcopy(model)
    trial.eval()
    hold_removed(trial, removed)
    return trial


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _keep_records_through(path: Path, step: int) -> None:
    """Drop the records of attempts after ``step``: a resumed run makes them again."""
    keep_log_records(path, lambda record: record["step"] <= step)
