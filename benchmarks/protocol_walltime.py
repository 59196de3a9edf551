"""Wall time of the whole paper protocol for one task: data, 250 epochs, decompiling and the
faithfulness check on every example, as a user runs it (`tprog train sort`).

    python benchmarks/protocol_walltime.py [--task sort] [--out DIR] [KEY=VALUE ...]

``--out`` keeps the run there (for `benchmarks/program_throughput.py --run DIR`, say); without
it the run goes to a temporary directory and is deleted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import emit, train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="sort")
    parser.add_argument("--out", type=Path, help="keep the run in this new directory")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / args.task
        started = time.perf_counter()
        train_run(args.task, out, *args.overrides)
        seconds = time.perf_counter() - started
        results = json.loads((out / "results.json").read_text())
        timing = (out / "timing.jsonl").read_text().splitlines()
        training = sum(json.loads(line)["seconds"] for line in timing)
    emit(
        "protocol_walltime",
        task=args.task,
        overrides=args.overrides,
        seconds=round(seconds, 1),
        # epochs (training and validation); the rest is start-up, data and decompiling
        epochs_seconds=round(training, 1),
        test_accuracy=results["test_accuracy"],
        agreement=results["agreement"],
    )


if __name__ == "__main__":
    main()
