"""Peak resident memory of a whole training run (train, decompile, faithfulness check).

Runs `tprog train` in a child process and reads the child's maximum resident set size.

    python benchmarks/peak_memory.py [--task most_freq] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from _common import emit, train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="most_freq")  # Table 1's largest: L3, 4+4 heads, 2+2 MLPs
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train_run(args.task, Path(tmp) / "run", *args.overrides)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    emit(
        "peak_memory",
        task=args.task,
        overrides=args.overrides,
        peak_rss_mib=round(peak_kib / 1024, 1),
    )


if __name__ == "__main__":
    main()
