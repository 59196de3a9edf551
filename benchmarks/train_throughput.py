"""Steady-state training throughput for sort at its paper Table 1 configuration.

3 layers, 4+4 heads, 2+2 MLPs, batch 512, d_var 8, on the protocol's training split
(~11.4k examples). The first epoch is warm-up; validation is switched off so that only
training steps are timed.

    python benchmarks/train_throughput.py [--epochs 5] [--task sort] [--profile] [--step-cost]

``--profile`` also prints where one epoch's time goes, by operator and input shape: the wall
time of every aten operator (forward and backward) as it runs, which is what a step pays.
(torch.profiler's table, tried first, charged the operators that allocate a large output up to
20x what they take when timed alone or inside training, so it pointed at the wrong places.)
It ends with the step's floor: the floating-point operations of its matrix products
(``torch.utils.flop_counter``) and the bytes its operators read and write, against what this
machine's threads reach on a large matrix product and a large copy. A step can be no faster
than either figure allows while it runs the same operators, each one pass over memory.
``--step-cost`` also times training steps at batch sizes 64 to 512 and fits
``seconds per step = fixed + per_example * batch``: the part a step pays whatever its size
(operator dispatch, autograd, the optimiser) against the part that grows with the data.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from _common import emit
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from tprog.errors import TprogError
from tprog.rundir import Run
from tprog.tasks import task_config
from tprog.tasks.registry import get_task
from tprog.train import Stage, Tensors, _train_epoch, new_optimizer, resolve, train


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
            _train_epoch(model, optimizer, _stage(one_batch, taus), batch_size, number, generators)
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


def _stage(data: Tensors, taus: np.ndarray) -> Stage:
    """Training's stage over ``data`` at the temperatures ``taus`` (no checkpoints)."""
    return Stage(data, taus, start=0, epochs=1, checkpoint_every=10**6)


def _training_state(config, dataset):
    run = Run(None, config, get_task(config.task), dataset.vocab, dataset.labels)
    generator = torch.Generator().manual_seed(config.seed)
    model = run.new_model(generator)
    optimizer = new_optimizer(model, config.train.lr)
    generators = {"data": generator, "noise": torch.Generator().manual_seed(config.seed)}
    return model, optimizer, Tensors.of(dataset.train, "cpu"), generators


class _OperatorClock(TorchDispatchMode):
    """Wall time, calls and memory traffic per (aten operator, input shapes), forward and
    backward alike."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        # read and written by operators that compute (views move nothing)
        self.bytes: dict[tuple[str, str], int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        started = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - started
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        shapes = ", ".join(str(list(a.shape)) for a in tensors)
        key = (str(func.overloadpacket.__name__), shapes)
        self.seconds[key] += elapsed
        self.calls[key] += 1
        if not func.is_view:
            outs = out if isinstance(out, (list, tuple)) else [out]
            touched = [t for t in [*tensors, *outs] if isinstance(t, torch.Tensor)]
            self.bytes[key] += sum(_footprint(t) for t in touched)
        return out


def _footprint(tensor: torch.Tensor) -> int:
    """Bytes an operator touches reading or writing ``tensor``: a broadcast (stride 0) operand
    counts once, not once per use."""
    distinct = math.prod(
        n for n, stride in zip(tensor.shape, tensor.stride(), strict=True) if stride
    )
    return distinct * tensor.element_size()


def _machine_rates(repeats: int = 20) -> tuple[float, float, float]:
    """What this machine reaches, with torch's current threads, on operators large enough to
    run at their best: GFLOP/s of a 1024 x 1024 float32 matrix product, and GB/s read and
    written by a copy of 2 MB (in cache, as most of a step's operands are) and of 64 MB (from
    memory)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)

    def best(operation) -> float:
        operation()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            operation()
            times.append(time.perf_counter() - started)
        return min(times)

    def copy_rate(megabytes: int) -> float:
        source = torch.randn(megabytes << 18)  # 4-byte floats
        target = torch.empty_like(source)
        return 2 * source.nbytes / best(lambda: target.copy_(source)) / 1e9

    return 2 * 1024**3 / best(lambda: a @ b) / 1e9, copy_rate(2), copy_rate(64)


def print_profile(config, dataset, rows: int = 25) -> None:
    """One training epoch (after one of warm-up), every operator timed as it runs: the
    operators and shapes that take the most time, per step, and the share each takes."""
    model, optimizer, data, generators = _training_state(config, dataset)
    stage = _stage(data, np.full(10**6, config.train.tau_start))

    def epoch() -> None:
        _train_epoch(model, optimizer, stage, config.train.batch_size, 0, generators)

    epoch()
    started = time.perf_counter()
    epoch()
    plain = time.perf_counter() - started
    clock = _OperatorClock()
    with clock:
        epoch()
    steps = math.ceil(len(data.ids) / config.train.batch_size)
    total = sum(clock.seconds.values())
    print(
        f"epoch {plain:.2f} s untimed; {sum(clock.calls.values()) / steps:.0f} operator calls "
        f"per step taking {total:.2f} s in all (timing adds a few microseconds to each)"
    )
    by_operator: dict[str, float] = defaultdict(float)
    for (name, _), seconds in clock.seconds.items():
        by_operator[name] += seconds
    print(f"{'ms/step':>8} {'share':>6}  operator")
    for name, seconds in sorted(by_operator.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"{1000 * seconds / steps:8.2f} {seconds / total:6.1%}  {name}")
    print(f"\n{'ms/step':>8} {'share':>6} {'calls':>6}  operator (input shapes)")
    for key, seconds in sorted(clock.seconds.items(), key=lambda kv: -kv[1])[:rows]:
        print(
            f"{1000 * seconds / steps:8.2f} {seconds / total:6.1%} {clock.calls[key] / steps:6.1f}"
            f"  {key[0]} ({key[1]})"
        )
    with FlopCounterMode(display=False) as flops:
        epoch()
    print_floor(
        flops.get_total_flops() / steps,
        sum(clock.bytes.values()) / steps,
        1000 * plain / steps,
        config,
    )


def print_floor(flops: float, traffic: float, ms_per_step: float, config) -> None:
    """What the step's matrix products and memory traffic allow on this machine, against the
    step it takes and the issue's 25,000 examples/s."""
    gflops, in_cache, in_memory = _machine_rates()
    products = f"matrix products {flops / 1e6:.0f} MFLOP, {flops / gflops / 1e6:.1f} ms"
    products += f" at {gflops:.0f} GFLOP/s (a 1024 x 1024 product here)"
    moved = f"operators read and write {traffic / 1e6:.0f} MB"
    moved += f", {traffic / in_cache / 1e6:.1f} ms at {in_cache:.0f} GB/s (a 2 MB copy)"
    moved += f" to {traffic / in_memory / 1e6:.1f} ms at {in_memory:.0f} GB/s (64 MB)"
    target_ms = 1000 * config.train.batch_size / 25_000
    print(f"\nfloor of a step: {products}; {moved}.")
    print(f"A step takes {ms_per_step:.1f} ms; 25,000 examples/s needs {target_ms:.1f} ms.")


if __name__ == "__main__":
    try:
        main()
    except TprogError as error:  # an unknown task, say: one sentence, as tprog gives it
        sys.exit(f"error: {error}")
