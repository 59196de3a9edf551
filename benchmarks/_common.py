"""Shared helpers for the benchmark scripts: each prints one JSON line per figure."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def emit(benchmark: str, **figures: object) -> None:
    """Print one JSON line: the benchmark's name, its figures, and the machine they came from."""
    record = {
        "benchmark": benchmark,
        **figures,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(record, sort_keys=True))
    sys.stdout.flush()


def train_run(task: str, out: Path, *overrides: str) -> None:
    """`tprog train TASK --out OUT KEY=VALUE...` in a child process, quietly; if it fails, exit
    with its error message (which ``--quiet`` would otherwise hide)."""
    command = [sys.executable, "-m", "tprog", "train", task, "--out", str(out), "--quiet"]
    finished = subprocess.run([*command, *overrides], capture_output=True, text=True)
    if finished.returncode:
        sys.exit(f"tprog train failed:\n{finished.stderr.strip()}")
