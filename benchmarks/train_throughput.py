"""Steady-state training throughput for sort at its paper Table 1 configuration.

3 layers, 4+4 heads, 2+2 MLPs, batch 512, d_var 8, on the protocol's training split
(~11.4k examples). The first epoch is warm-up; validation is switched off so that only
training steps are timed.

    python benchmarks/train_throughput.py [--epochs 5] [--task sort] [--profile] [--step-cost]

``--profile`` also prints where one epoch's time goes, by operator and input shape.
``--step-cost`` also times training steps at batch sizes 64 to 512 and fits
``seconds per step = fixed + per_example * batch``: the part a step pays whatever its size
(operator dispatch, autograd, the optimiser) against the part that grows with the data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit
from torch.profiler import profile

from tprog.rundir import Run
from tprog.tasks import task_config
from tprog.tasks.registry import get_task
from tprog.train import Tensors, _train_epoch, new_optimizer, resolve, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="sort")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--step-cost", action="store_true")
    args = parser.parse_args()
    overrides = {
        "train.epochs": args.epochs + 1,
        "train.eval_every": 10**6,
        "train.checkpoint_every": 10**6,
    }
    config, dataset = resolve(task_config(args.task, overrides))
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp), progress=False, dataset=dataset)
        lines = (Path(tmp) / "timing.jsonl").read_text().splitlines()
    # The last epoch also evaluates (once, at the end): time the epochs in between.
    seconds = [json.loads(line)["seconds"] for line in lines[1:-1]] or [
        json.loads(lines[-1])["seconds"]
    ]
    per_epoch = sorted(seconds)[len(seconds) // 2]  # median: robust to a noisy neighbour
    emit(
        "train_throughput",
        task=args.task,
        train_examples=len(dataset.train),
        batch_size=config.train.batch_size,
        seconds_per_epoch=round(per_epoch, 4),
        examples_per_s=round(len(dataset.train) / per_epoch, 1),
    )
    if args.profile:
        print_profile(config, dataset)
    if args.step_cost:
        print_step_cost(config, dataset)


def print_step_cost(config, dataset, batch_sizes=(64, 128, 256, 512), steps=20) -> None:
    """Median seconds per step at each batch size (after warm-up steps), and a least-squares
    line through them."""
    model, optimizer, data, generators = _training_state(config, dataset)
    taus = np.full(steps + 3, config.train.tau_start)
    seconds = []
    for batch_size in batch_sizes:
        # An epoch over a split of one batch is one training step, exactly as training takes it.
        one_batch = Tensors(
            data.ids[:batch_size], data.targets[:batch_size], data.lengths[:batch_size]
        )
        times = []
        for number in range(steps + 3):  # the first steps of a new size are warm-up
            started = time.perf_counter()
            _train_epoch(model, optimizer, one_batch, batch_size, taus, number, generators)
            if number >= 3:
                times.append(time.perf_counter() - started)
        seconds.append(sorted(times)[len(times) // 2])
    per_example, fixed = np.polyfit(batch_sizes, seconds, 1)
    emit(
        "train_step_cost",
        task=config.task,
        batch_sizes=list(batch_sizes),
        ms_per_step=[round(1000 * s, 2) for s in seconds],
        fixed_ms_per_step=round(1000 * fixed, 2),
        ms_per_example=round(1000 * per_example, 4),
    )


def _training_state(config, dataset):
    run = Run(None, config, get_task(config.task), dataset.vocab, dataset.labels)
    generator = torch.Generator().manual_seed(config.seed)
    model = run.new_model(generator)
    optimizer = new_optimizer(model, config.train.lr)
    generators = {"data": generator, "noise": torch.Generator().manual_seed(config.seed)}
    return model, optimizer, Tensors.of(dataset.train, "cpu"), generators


def print_profile(config, dataset) -> None:
    """One training epoch (after one of warm-up) under the torch profiler."""
    model, optimizer, data, generators = _training_state(config, dataset)
    taus = np.full(10**6, config.train.tau_start)
    _train_epoch(model, optimizer, data, config.train.batch_size, taus, 0, generators)
    with profile(record_shapes=True) as prof:
        _train_epoch(model, optimizer, data, config.train.batch_size, taus, 0, generators)
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=28
    )
    print(table)


if __name__ == "__main__":
    main()
