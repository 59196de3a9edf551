"""The training loop: Gumbel-softmax with a per-step geometric temperature schedule.

Protocol defaults follow the paper (TASKS.md): Adam, one Gumbel sample per step, tau annealed
geometrically from ``tau_start`` to ``tau_end`` over every step of training, the hard (argmax)
model evaluated at the end. Data stays resident as tensors; a batch is an index into them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tprog.checkpoint import CHECKPOINT, restore_checkpoint, save_checkpoint
from tprog.config import RunConfig, check_feasible
from tprog.data import Dataset, Split, build_dataset
from tprog.errors import ConfigError, TprogError
from tprog.model.program import TransformerProgram
from tprog.model.sampling import Sampling
from tprog.rundir import (
    CONFIG,
    METRICS,
    MODEL,
    TIMING,
    VOCAB,
    Run,
    mark_run_dir,
    save_model,
    write_atomic,
    write_json,
)
from tprog.tasks.registry import Task, get_task, import_task_module
from tprog.verify import DEFAULT_MAX_INPUTS

EVAL_CHUNK = 4096  # examples per hard-mode forward when evaluating a split


class TrainingDiverged(TprogError):
    pass


@dataclass(frozen=True)
class Tensors:
    """One split as resident tensors."""

    ids: torch.Tensor  # [B, n_ctx] int64
    targets: torch.Tensor  # [B, n_ctx] int64, 0 = ignored
    lengths: torch.Tensor  # [B]

    @classmethod
    def of(cls, split: Split, device: str) -> Tensors:
        return cls(
            *(
                torch.as_tensor(a, device=device)
                for a in (split.ids, split.target_ids, split.lengths)
            )
        )


def tau_schedule(start: float, end: float, steps: int) -> np.ndarray:
    """Geometric from ``start`` to ``end`` inclusive, one value per optimisation step."""
    return np.geomspace(start, end, num=max(steps, 1))


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy averaged within each sequence, then over the batch (the paper's
    "per_token" aggregation); label 0 (``<pad>``) is ignored."""
    nll = -logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, N]
    mask = (targets != 0).float()
    per_sequence = (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_sequence.mean()


@torch.no_grad()
def predict(
    model: TransformerProgram, ids: torch.Tensor, lengths: torch.Tensor, exact: bool = True
) -> torch.Tensor:
    """Hard-mode predictions ``[B, N]``, computing the MLP tables once for all chunks.

    ``exact=False`` (monitoring during training) skips enumerating numerical MLP tables.
    """
    tables = model.hard_tables(numerical=exact)
    outs = [
        model(ids[s : s + EVAL_CHUNK], lengths[s : s + EVAL_CHUNK], None, tables).argmax(-1)
        for s in range(0, len(ids), EVAL_CHUNK)
    ]
    return torch.cat(outs) if outs else torch.zeros_like(ids)


def hard_predictions(model: TransformerProgram, split: Split) -> np.ndarray:
    """Hard-mode predictions ``[B, N]`` for a split, computed on the model's device."""
    device = next(model.parameters()).device
    ids, lengths = (torch.as_tensor(a, device=device) for a in (split.ids, split.lengths))
    return predict(model, ids, lengths).cpu().numpy()


def split_accuracy(predicted: np.ndarray, split: Split) -> float:
    """Token accuracy of predictions ``[B, N]`` against a split's targets."""
    return accuracy(torch.as_tensor(predicted), torch.as_tensor(split.target_ids))


def accuracy(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """Token accuracy over non-``<pad>`` targets."""
    mask = targets != 0
    return float((predicted[mask] == targets[mask]).float().mean()) if mask.any() else float("nan")


def resolve(config: RunConfig) -> tuple[RunConfig, Dataset]:
    """Build the data and fill in ``model.d_var``; rejects configs that cannot work."""
    if config.task_module:
        import_task_module(config.task_module)
    task = get_task(config.task)
    dataset = build_dataset(task, config)
    d_var = check_feasible(config, len(dataset.vocab), len(dataset.labels))
    if config.train.refit_readout:
        check_enumerable(task, config)
    model_cfg = config.model.model_copy(update={"d_var": d_var})
    return config.model_copy(update={"model": model_cfg}), dataset


def check_enumerable(task: Task, config: RunConfig) -> None:
    """Refuse, before any training, a refit that would need a domain too large to enumerate."""
    domain = task.input_domain(config.data)
    if domain is None:
        why = f"{config.task} declares no input domain"
    elif domain.size() > DEFAULT_MAX_INPUTS:
        why = (
            f"{config.task}'s has {domain.size():,} inputs, more than the "
            f"{DEFAULT_MAX_INPUTS:,} tprog enumerates"
        )
    else:
        return
    raise ConfigError(
        f"train.refit_readout fits the classifier on every input of the task's domain, and {why}."
    )


@dataclass
class Session:
    """A run being trained: what every epoch needs, whichever stage it belongs to."""

    model: TransformerProgram
    optimizer: torch.optim.Optimizer
    config: RunConfig
    val: Tensors
    # "data" initialised the model and then shuffles; "noise" draws the Gumbel noise.
    generators: dict[str, torch.Generator]
    out_dir: Path
    progress: bool

    @classmethod
    def start(
        cls, run: Run, dataset: Dataset, *, progress: bool, resume: bool
    ) -> tuple[Session, int]:
        """A fresh model, optimiser and generators, restored from the run's checkpoint when
        resuming; returns the session and the epochs already done."""
        config, device = run.config, run.config.train.device
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        model = run.new_model(generator).to(device)
        optimizer = new_optimizer(model, config.train.lr)
        generators = {
            "data": generator,
            "noise": torch.Generator(device=device).manual_seed(config.seed),
        }
        session = cls(
            model,
            optimizer,
            config,
            Tensors.of(dataset.val, device),
            generators,
            run.path,
            progress,
        )
        done = restore_if_resuming(run.path, config, model, optimizer, generators, resume)
        return session, done


def start_run_dir(config: RunConfig, dataset: Dataset, out_dir: Path, resume: bool) -> None:
    """run.json and config.json for a new run; vocab.json always."""
    if not resume:
        mark_run_dir(out_dir, config.task)
        write_atomic(out_dir / CONFIG, config.to_json())
    labels = {"tokens": list(dataset.vocab.tokens), "labels": list(dataset.labels.tokens)}
    write_json(out_dir / VOCAB, labels)


def restore_if_resuming(
    out_dir: Path,
    config: RunConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    resume: bool,
) -> int:
    """The epochs already done: restored from the run's checkpoint when resuming and there is
    one, else 0. Log lines past the checkpoint are dropped: those epochs run again."""
    done = 0
    if resume and (out_dir / CHECKPOINT).is_file():
        done = restore_checkpoint(
            out_dir / CHECKPOINT,
            config_json=config.to_json(),
            model=model,
            optimizer=optimizer,
            generators=generators,
        )
    for log in (METRICS, TIMING):
        keep_first_lines(out_dir / log, done)
    return done


@dataclass(frozen=True)
class Stage:
    """A stretch of epochs over one training set, with its own temperature schedule."""

    data: Tensors
    taus: np.ndarray  # one temperature per optimisation step of the stage
    start: int  # epochs of the run completed before the stage begins
    epochs: int
    checkpoint_every: int
    label: dict[str, int] = field(default_factory=dict)  # added to each metrics record
    noise: bool = True  # see Sampling
    straight_through: bool = False  # see Sampling

    @property
    def end(self) -> int:
        return self.start + self.epochs


def train(
    config: RunConfig,
    out_dir: Path,
    *,
    progress: bool = True,
    dataset: Dataset | None = None,
    resume: bool = False,
) -> Run:
    """Train ``config`` into ``out_dir`` (config, vocab, checkpoints, metrics, model).

    With ``resume``, continue from the last checkpoint in ``out_dir`` (from scratch if there is
    none yet); the result is the same as that of an uninterrupted run.
    """
    if dataset is None:
        config, dataset = resolve(config)
    start_run_dir(config, dataset, out_dir, resume)
    run = Run(out_dir, config, get_task(config.task), dataset.vocab, dataset.labels)
    session, done = Session.start(run, dataset, progress=progress, resume=resume)
    cfg = config.train
    train_t = Tensors.of(dataset.train, cfg.device)
    steps = cfg.epochs * math.ceil(len(train_t.ids) / cfg.batch_size)
    stage = Stage(
        train_t,
        tau_schedule(cfg.tau_start, cfg.tau_end, steps),
        0,
        cfg.epochs,
        cfg.checkpoint_every,
    )
    fit(session, stage, done)
    save_model(out_dir / MODEL, session.model.cpu(), config)
    return run


def fit(session: Session, stage: Stage, done: int) -> None:
    """Run the epochs of ``stage`` not among the ``done`` epochs of the run, logging metrics
    and timing per epoch and checkpointing every ``stage.checkpoint_every`` and at its end."""
    model, config, cfg = session.model, session.config, session.config.train
    steps_per_epoch = math.ceil(len(stage.data.ids) / cfg.batch_size)
    epochs = tqdm(
        range(max(done, stage.start), stage.end),
        desc=config.task,
        unit="epoch",
        total=stage.end,
        initial=max(done, stage.start),
        disable=not session.progress,
        leave=False,
    )
    for epoch in epochs:
        started = time.perf_counter()
        first_step = (epoch - stage.start) * steps_per_epoch
        train_loss, step = _train_epoch(
            model, session.optimizer, stage, cfg.batch_size, first_step, session.generators
        )
        record = {
            "epoch": epoch + 1,
            **stage.label,
            "step": step,
            "tau": float(stage.taus[step - 1]),
            "train_loss": train_loss,
        }
        if not math.isfinite(record["train_loss"]):
            raise TrainingDiverged(
                f"training diverged at epoch {epoch + 1} (loss is {record['train_loss']}); "
                "try a lower train.lr."
            )
        last = epoch + 1 == stage.end
        if (epoch + 1) % cfg.eval_every == 0 or last:
            model.eval()
            predicted = predict(model, session.val.ids, session.val.lengths, exact=False)
            record["val_accuracy"] = accuracy(predicted, session.val.targets)
        # Timing lives apart from the metrics, which are identical run to run.
        append_line(
            session.out_dir / TIMING,
            {"epoch": epoch + 1, "seconds": time.perf_counter() - started},
        )
        append_line(session.out_dir / METRICS, record)
        if (epoch + 1 - stage.start) % stage.checkpoint_every == 0 or last:
            save_checkpoint(
                session.out_dir / CHECKPOINT,
                epoch=epoch + 1,
                config_json=config.to_json(),
                model=model,
                optimizer=session.optimizer,
                generators=session.generators,
            )
        epochs.set_postfix(loss=f"{record['train_loss']:.3f}", val=record.get("val_accuracy"))
    model.eval()


def _train_epoch(
    model: TransformerProgram,
    optimizer: torch.optim.Optimizer,
    stage: Stage,
    batch_size: int,
    step: int,
    generators: dict[str, torch.Generator],
) -> tuple[float, int]:
    """One pass over the shuffled training set of ``stage``; returns (mean loss, steps taken
    so far)."""
    train_t = stage.data

    def batch_loss(batch: torch.Tensor, number: int) -> torch.Tensor:
        sampling = Sampling(
            float(stage.taus[step + number]),
            generators["noise"],
            stage.noise,
            stage.straight_through,
        )
        logits = model(train_t.ids[batch], train_t.lengths[batch], sampling)
        return sequence_loss(logits, train_t.targets[batch])

    loss = optimise_epoch(model, optimizer, train_t, batch_size, generators["data"], batch_loss)
    return loss, step + math.ceil(len(train_t.ids) / batch_size)


def new_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam over ``model``'s parameters. A Transformer Program has dozens of small parameter
    tensors, and Adam's default on CPU (a loop of ~10 tensor operations per parameter) costs
    milliseconds a step; the multi-tensor ("foreach") version takes the same steps, bit for
    bit, in a fraction of the time."""
    return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


def optimise_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_t: Tensors,
    batch_size: int,
    shuffle: torch.Generator,
    batch_loss: Callable[[torch.Tensor, int], torch.Tensor],
) -> float:
    """One optimisation step per batch of a fresh shuffle of ``train_t`` (``shuffle`` draws it);
    ``batch_loss(example indices, batch number)`` is the batch's loss. Returns the mean loss."""
    model.train()
    n = len(train_t.ids)
    order = torch.randperm(n, generator=shuffle).to(train_t.ids.device)
    loss_sum = torch.zeros((), device=train_t.ids.device)
    for number, start in enumerate(range(0, n, batch_size)):
        batch = order[start : start + batch_size]
        loss = batch_loss(batch, number)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(batch)
    return float(loss_sum) / n


def keep_first_lines(path: Path, count: int) -> None:
    """Truncate a JSON-lines log to its first ``count`` lines (all of them gone for 0)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:count]
    write_atomic(path, "".join(lines))


def append_line(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
