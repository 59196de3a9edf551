"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, the optimiser, both random generators and the number of epochs
completed; the temperature schedule and step count follow from the epoch. Resuming from it
replays the remaining epochs bit for bit, so an interrupted run ends with the same program as
an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError

from tprog.config import RunConfig
from tprog.errors import RunDirError
from tprog.rundir import load_state, load_torch_file, save_torch_file

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(
    path: Path,
    *,
    epoch: int,
    config_json: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
) -> None:
    """Atomically write the state after ``epoch`` completed epochs."""
    save_torch_file(
        path,
        {
            "epoch": epoch,
            "config": config_json,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generators": {name: g.get_state() for name, g in generators.items()},
        },
    )


def same_config(saved: object, current: str) -> bool:
    """Whether a checkpoint's config JSON is the configuration ``current`` states. Compared as
    configurations, not as text: a checkpoint written before a config key existed holds that
    key's default, and must stay resumable."""
    if saved == current:
        return True
    if not isinstance(saved, str):
        return False
    try:
        return RunConfig.model_validate_json(saved) == RunConfig.model_validate_json(current)
    except ValidationError:
        return False


def restore_checkpoint(
    path: Path,
    *,
    config_json: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
) -> int:
    """Load the state into ``model``, ``optimizer`` and ``generators``; returns the epochs done.

    A checkpoint written for another configuration (task, architecture, data, schedule) is
    refused with a sentence naming the file.
    """
    blob = load_torch_file(path, "epoch")
    if not same_config(blob.get("config"), config_json):
        raise RunDirError(
            f"{path} was written for another configuration than {path.parent / 'config.json'}; "
            "start a new run instead of resuming this one."
        )
    load_state(model, blob["model"], path, path.parent)
    try:
        optimizer.load_state_dict(blob["optimizer"])
        for name, generator in generators.items():
            generator.set_state(blob["generators"][name])
    except (KeyError, ValueError, RuntimeError, TypeError):
        raise RunDirError(f"{path} is corrupt (its optimiser or RNG state is unusable).") from None
    return int(blob["epoch"])
