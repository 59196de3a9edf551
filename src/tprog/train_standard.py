"""Training the standard-Transformer baseline (``model.kind=standard``).

The paper's protocol for its baseline: Adam at ``standard.lr`` (3e-4), batches of
``standard.batch_size`` (50), up to ``standard.epochs`` (100) epochs over the same data and
splits as a program run; validation accuracy after every epoch; the weights of the best
validation epoch (ties: the earliest) are kept, and their train/val/test accuracies reported.
``train.lr``, ``train.batch_size``, ``train.epochs``, ``train.tau_*`` and ``train.eval_every``
do not apply; ``train.checkpoint_every`` and ``train.device`` do.

The run directory is laid out like a program run's (run.json, config.json, vocab.json,
metrics.jsonl, timing.jsonl, checkpoint.pt, model.pt, results.json) but holds no program.
A checkpoint holds the model in training *and* the best state so far, so a resumed run selects
the same epoch and ends with the same results as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from tprog.checkpoint import CHECKPOINT, save_checkpoint
from tprog.config import RunConfig
from tprog.data import Dataset
from tprog.decompile import Outcome
from tprog.errors import RunDirError
from tprog.model.standard import StandardShape, StandardTransformer
from tprog.rundir import (
    CONFIG,
    METRICS,
    MODEL,
    RESULTS,
    TIMING,
    load_config,
    load_state,
    load_torch_file,
    load_vocab,
    save_torch_file,
    write_json,
)
from tprog.tasks.registry import get_task
from tprog.train import (
    Tensors,
    TrainingDiverged,
    accuracy,
    append_line,
    optimise_epoch,
    resolve,
    restore_if_resuming,
    sequence_loss,
    start_run_dir,
)
from tprog.vocab import PAD, Vocab

SPLITS = ("train", "val", "test")


def new_standard_model(
    config: RunConfig, vocab: Vocab, labels: Vocab, generator: torch.Generator | None = None
) -> StandardTransformer:
    """The untrained baseline for ``config``, initialised from ``generator`` (default: one
    seeded with ``config.seed``)."""
    std = config.standard
    shape = StandardShape(
        n_tokens=len(vocab),
        n_ctx=config.data.max_length,
        n_labels=len(labels),
        n_layers=config.model.n_layers,
        d_model=std.d_model,
        n_heads=std.n_heads,
        d_mlp=std.d_mlp,
        dropout=std.dropout,
        causal=get_task(config.task).causal,
    )
    generator = generator or torch.Generator().manual_seed(config.seed)
    masked = [label == PAD for label in labels.tokens]
    return StandardTransformer(shape, masked, generator)


def improves(candidate: float, best: float | None) -> bool:
    """Whether a validation accuracy replaces the best so far: strictly better, so that ties
    keep the earliest epoch (``best`` is None before the first epoch)."""
    return best is None or candidate > best


class Selection(nn.Module):
    """The model in training and the best-validation state so far.

    One module, so that one atomic checkpoint (`tprog.checkpoint`) holds both: a run resumed
    from it selects exactly what an uninterrupted run selects.
    """

    def __init__(self, live: StandardTransformer):
        super().__init__()
        self.live = live
        self.best = copy.deepcopy(live).requires_grad_(False)
        self.register_buffer("best_epoch", torch.zeros((), dtype=torch.int64))  # 0: none yet
        self.register_buffer("best_val", torch.zeros((), dtype=torch.float64))

    def offer(self, epoch: int, val_accuracy: float) -> None:
        """Keep the live weights if ``val_accuracy`` (after ``epoch``) is the best so far."""
        best = float(self.best_val) if int(self.best_epoch) else None
        if improves(val_accuracy, best):
            self.best.load_state_dict(self.live.state_dict())
            self.best_epoch.fill_(epoch)
            self.best_val.fill_(val_accuracy)


def train_standard(
    config: RunConfig,
    out_dir: Path,
    *,
    progress: bool = True,
    dataset: Dataset | None = None,
    resume: bool = False,
) -> Outcome:
    """Train the baseline into ``out_dir`` and write its results.json; with ``resume``,
    continue from the last checkpoint there (from scratch if there is none yet)."""
    if dataset is None:
        config, dataset = resolve(config)
    out_dir = Path(out_dir)
    start_run_dir(config, dataset, out_dir, resume)
    device = config.train.device
    # "data" initialises the model, then shuffles; "dropout" draws the dropout masks.
    generators = {
        "data": torch.Generator(device="cpu").manual_seed(config.seed),
        "dropout": torch.Generator(device=device).manual_seed(config.seed),
    }
    live = new_standard_model(config, dataset.vocab, dataset.labels, generators["data"])
    selection = Selection(live).to(device)
    optimizer = torch.optim.Adam(selection.live.parameters(), lr=config.standard.lr)
    done = restore_if_resuming(out_dir, config, selection, optimizer, generators, resume)
    splits = {name: Tensors.of(getattr(dataset, name), device) for name in SPLITS}
    _fit(selection, optimizer, config, splits, generators, out_dir, done, progress)
    return _finish(selection, config, splits, out_dir)


def _fit(
    selection: Selection,
    optimizer: torch.optim.Optimizer,
    config: RunConfig,
    splits: dict[str, Tensors],
    generators: dict[str, torch.Generator],
    out_dir: Path,
    done: int,  # epochs already completed (resumed from a checkpoint)
    progress: bool,
) -> None:
    epochs_total = config.standard.epochs
    epochs = tqdm(
        range(done, epochs_total),
        desc=f"{config.task} (standard)",
        unit="epoch",
        total=epochs_total,
        initial=done,
        disable=not progress,
        leave=False,
    )
    for epoch in epochs:
        started = time.perf_counter()
        loss = _train_epoch(
            selection.live, optimizer, splits["train"], config.standard.batch_size, generators
        )
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged at epoch {epoch + 1} (loss is {loss}); try a lower standard.lr."
            )
        val_accuracy = _split_accuracy(selection.live, splits["val"])
        selection.offer(epoch + 1, val_accuracy)
        record = {"epoch": epoch + 1, "train_loss": loss, "val_accuracy": val_accuracy}
        # Timing lives apart from the metrics, which are identical run to run.
        append_line(
            out_dir / TIMING, {"epoch": epoch + 1, "seconds": time.perf_counter() - started}
        )
        append_line(out_dir / METRICS, record)
        if (epoch + 1) % config.train.checkpoint_every == 0 or epoch + 1 == epochs_total:
            save_checkpoint(
                out_dir / CHECKPOINT,
                epoch=epoch + 1,
                config_json=config.to_json(),
                model=selection,
                optimizer=optimizer,
                generators=generators,
            )
        epochs.set_postfix(loss=f"{loss:.3f}", val=val_accuracy)


def _train_epoch(
    model: StandardTransformer,
    optimizer: torch.optim.Optimizer,
    train_t: Tensors,
    batch_size: int,
    generators: dict[str, torch.Generator],
) -> float:
    """One pass over the shuffled training split; returns the mean training loss."""

    def batch_loss(batch: torch.Tensor, number: int) -> torch.Tensor:
        logits = model(train_t.ids[batch], train_t.lengths[batch], generators["dropout"])
        return sequence_loss(logits, train_t.targets[batch])

    return optimise_epoch(model, optimizer, train_t, batch_size, generators["data"], batch_loss)


def _split_accuracy(model: StandardTransformer, split: Tensors) -> float:
    model.eval()
    return accuracy(model.predict(split.ids, split.lengths), split.targets)


def _finish(
    selection: Selection, config: RunConfig, splits: dict[str, Tensors], out_dir: Path
) -> Outcome:
    """Save the best state as model.pt and its accuracies as results.json."""
    best = selection.best.eval()
    results: dict[str, Any] = {
        "model": "standard",
        "best_epoch": int(selection.best_epoch),
        "epochs": config.standard.epochs,
        **{f"{name}_accuracy": _split_accuracy(best, splits[name]) for name in SPLITS},
        "agreement": None,  # no program: nothing to be faithful to
        "n_parameters": sum(p.numel() for p in best.parameters()),
        "machine": platform.machine(),
    }
    save_torch_file(out_dir / MODEL, {"state_dict": best.cpu().state_dict(), **_identity(config)})
    write_json(out_dir / RESULTS, results)
    return Outcome(out_dir, results)


def _identity(config: RunConfig) -> dict[str, Any]:
    # The task and architecture travel with the weights, so that weights copied into another
    # run directory are refused by name (as for program runs, `tprog.rundir.save_model`).
    return {
        "task": config.task,
        "model": config.model.model_dump(),
        "standard": config.standard.model_dump(),
    }


def load_standard_model(run_dir: Path) -> StandardTransformer:
    """The trained baseline (best-validation weights) of a standard run directory."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if config.model.kind != "standard":
        raise RunDirError(f"{run_dir} is a Transformer Program run, not a standard one.")
    vocab, labels = load_vocab(run_dir)
    model = new_standard_model(config, vocab, labels)
    blob = load_torch_file(run_dir / MODEL, "state_dict")
    expected = _identity(config)
    if {key: blob.get(key) for key in expected} != expected:
        raise RunDirError(
            f"{run_dir / MODEL} does not match the task and architecture in {run_dir / CONFIG}."
        )
    load_state(model, blob["state_dict"], run_dir / MODEL, run_dir)
    return model.eval()
