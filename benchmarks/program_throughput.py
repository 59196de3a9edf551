"""Examples per second of a sort program on the same 10,000 sort inputs: the generated module,
one `run` call per input and one `run_batch` call for all of them, and the batched IR
interpreter (all inputs at once).

    python benchmarks/program_throughput.py [--run runs/sort-s0] [--n 10000] [--repeat 1]

Each figure is the median of ``--repeat`` timings, after one untimed call on 100 inputs (which
fills the module's caches and imports numpy); the interpreter's includes encoding the inputs. A
module generated before `run_batch` existed reports ``null`` for it, and a program without its
IR (program.json: the program folders under results/programs) ``null`` for the interpreter.
Without an existing run directory (no ``--run``, and no runs/sort-s0) it first trains a short
sort run (realistic program size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, train_run

from tprog.codegen import load_program_module
from tprog.config import RunConfig
from tprog.interpret import predict_ids
from tprog.pipeline import load_program
from tprog.tasks import get_task
from tprog.vocab import encode_batch

DEFAULT_RUN = Path("runs/sort-s0")  # used if present; otherwise a short run is trained


def sort_inputs(run_dir: Path, n: int) -> list[list[str]]:
    # The config alone (not load_run): run directories written before run.json work too.
    config = RunConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
    task = get_task(config.task)
    rng = np.random.default_rng(12345)
    return [task.generate(rng, config.data)[0] for _ in range(n)]


def _examples_per_s(call, inputs: list[list[str]], repeat: int) -> float:
    call(inputs[:100])
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        call(inputs)
        rates.append(len(inputs) / (time.perf_counter() - started))
    return round(statistics.median(rates), 1)


def measure(run_dir: Path, n: int, repeat: int) -> None:
    inputs = sort_inputs(run_dir, n)
    module = load_program_module(run_dir / "program.py")
    per_call = _examples_per_s(lambda xs: [module.run(x) for x in xs], inputs, repeat)
    batched = None
    if hasattr(module, "run_batch"):
        batched = _examples_per_s(module.run_batch, inputs, repeat)

    interpreted = None
    if (run_dir / "program.json").is_file():  # a program copied out of its run has no IR
        program = load_program(run_dir)

        def interpret(xs: list[list[str]]) -> None:
            ids, lengths = encode_batch(xs, program.vocab, program.n_ctx, program.unk)
            predict_ids(program, ids, lengths)

        interpreted = _examples_per_s(interpret, inputs, repeat)
    emit(
        "program_throughput",
        run=str(run_dir),
        inputs=n,
        module_examples_per_s=per_call,
        module_batch_examples_per_s=batched,
        interpreter_examples_per_s=interpreted,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, help=f"a sort run directory [{DEFAULT_RUN}]")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument(
        "--repeat", type=int, default=1, help="module timings to take the median of"
    )
    args = parser.parse_args()
    if args.run is not None and not (args.run / "program.py").is_file():
        parser.error(f"{args.run} holds no program.py: give a run directory tprog wrote.")
    run_dir = args.run or DEFAULT_RUN
    if (run_dir / "program.py").is_file():
        measure(run_dir, args.n, args.repeat)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "sort"
        train_run("sort", run_dir, "train.epochs=30")
        measure(run_dir, args.n, args.repeat)


if __name__ == "__main__":
    main()
