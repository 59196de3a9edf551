"""The Ray backend of ``tprog sweep``: each run is a Ray task executing the same
`tprog.sweep_worker.execute_run` as a local worker process, so the run folders, ``sweep.csv``
and ``summary.md`` come out the same.

Ray is an optional extra (``pip install 'tprog[ray]'``). On a cluster, every node needs tprog
installed and the sweep's output folder on a file system all nodes share (for resuming, and
because the reports are built from the run folders).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from tprog.errors import ConfigError
from tprog.sweep_worker import OnOutcome, RunJob, RunOutcome, cpu_count, execute_run


def run_on_ray(
    jobs: Sequence[tuple[int, RunJob]], address: str | None, on_outcome: OnOutcome
) -> None:
    """Submit every job as a Ray task asking for its thread count in CPUs; report each as it
    finishes. Connects to ``address`` (or Ray's default) unless Ray is already initialised."""
    ray = _import_ray()
    connected_here = not ray.is_initialized()
    if connected_here:
        _connect(ray, address)
    task = ray.remote(execute_run)
    pending: list[Any] = []
    try:
        largest = _largest_node_cpus(ray)
        refs = {}
        for index, job in jobs:
            job = dataclasses.replace(job, threads=min(job.threads, largest))
            refs[task.options(num_cpus=job.threads).remote(job)] = index
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            on_outcome(refs[ready[0]], _result(ray, ready[0]))
    finally:  # on an interrupt, runs not yet finished are cancelled
        for ref in pending:
            ray.cancel(ref, force=True)
        if connected_here:
            ray.shutdown()


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray backend needs Ray: install tprog[ray] (pip install 'tprog[ray]')."
        ) from None
    return ray


def _connect(ray: ModuleType, address: str | None) -> None:
    """A cluster's address (or ``RAY_ADDRESS``), else a Ray instance on this machine."""
    try:
        if address is None and not os.environ.get("RAY_ADDRESS"):
            ray.init(num_cpus=cpu_count(), include_dashboard=False)
        else:
            ray.init(address=address)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a local instance"
        raise ConfigError(f"cannot start or reach Ray at {where}: {exc}") from None


def _largest_node_cpus(ray: ModuleType) -> int:
    """A task asking for more CPUs than any node has would wait forever."""
    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return max(1, int(max(cpus, default=1)))


def _result(ray: ModuleType, ref: Any) -> RunOutcome:
    try:
        return ray.get(ref)
    except Exception as exc:  # the task's worker died or could not run it
        return RunOutcome(f"failed: Ray task failed ({type(exc).__name__}: {exc})")
