"""Sweep files: their typed schema, and the plan of runs a file expands to.

A sweep file names one task or several, optional dotted overrides for every run (``base``)
and per task (``per_task``), a grid over config keys, and seeds. A run's config is, later
winning: the task's paper configuration < base < per_task < grid point < seed. Every run's
config is built (so validated) when the plan is made: a bad key or value fails before anything
trains, in one sentence naming the file and the run.

A grid axis whose values are plain scalars sets the config key the axis is named after; an
axis whose values are mappings sets every key of the chosen mapping at once (tied keys, e.g.
``heads: [{model.n_heads_cat: 2, model.n_heads_num: 2}, ...]``), and its name is free.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tprog.config import RunConfig, known_keys
from tprog.errors import ConfigError
from tprog.tasks.registry import get_task, import_task_module, task_config

Scalar = bool | int | float | str | None
GridValue = Scalar | dict[str, Scalar]

# What each field must hold, for schema errors a person can act on.
FIELD_SHAPES = {
    "name": "a folder name",
    "task": "a task name",
    "tasks": "a list of task names",
    "base": "a mapping of dotted config keys to single values",
    "per_task": "a mapping from task name to a mapping of dotted config keys to values",
    "grid": "a mapping from a config key (or axis name) to a list of values",
    "seeds": "a number of seeds or a list of seeds",
}
RESERVED_KEYS = {"task": "`task:`/`tasks:`", "seed": "`seeds:`"}  # keys with a field of their own
SLUG_MAX = 80  # longer grid-point names are cut and given a hash, to stay a valid folder name


class SweepFile(BaseModel):
    """A sweep file as written; `plan_runs` gives it meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    task: str | None = None
    tasks: list[str] | None = None
    base: dict[str, Scalar] = {}
    per_task: dict[str, dict[str, Scalar]] = {}
    grid: dict[str, list[GridValue]] = {}
    seeds: int | list[int]

    def task_names(self) -> list[str]:
        return [self.task] if self.task is not None else list(self.tasks or [])

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class GridPoint:
    """One cell of the grid: the dotted overrides it sets, and its folder name."""

    overrides: Mapping[str, Any]
    slug: str


@dataclass(frozen=True)
class PlannedRun:
    task: str
    point: GridPoint
    seed: int
    config: RunConfig
    run_dir: Path  # relative to the sweep's output folder

    @property
    def name(self) -> str:
        return f"{self.task}/{self.point.slug}-s{self.seed}"


@dataclass(frozen=True)
class SweepPlan:
    """Every run of a sweep, in report order (task, grid order, seed)."""

    name: str
    source: Path
    runs: tuple[PlannedRun, ...]
    varying_keys: tuple[str, ...]  # dotted config keys (other than task, seed) that differ


def load_sweep_file(source: Path) -> SweepFile:
    """Read and type-check a sweep file; semantic checks follow in `plan_runs`."""
    try:
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read sweep file {str(source)!r}: {exc.strerror}.") from None
    except yaml.YAMLError:
        raise ConfigError(f"sweep file {str(source)!r} is not valid YAML.") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"sweep file {str(source)!r} must hold a mapping (task, grid, seeds...).")
    try:
        return SweepFile.model_validate(data)
    except ValidationError as exc:
        raise _schema_error(source, data, exc.errors()[0]) from None


def _schema_error(source: Path, data: Mapping[str, Any], error: Mapping[str, Any]) -> ConfigError:
    field = str(error["loc"][0]) if error["loc"] else ""
    fields = ", ".join(FIELD_SHAPES)
    if error["type"] == "extra_forbidden":
        return ConfigError(
            f"sweep file {str(source)!r} has an unknown field {field!r}; its fields are {fields}."
        )
    if error["type"] == "missing":
        return ConfigError(f"sweep file {str(source)!r} has no {field!r} field.")
    return ConfigError(
        f"sweep file {str(source)!r}: {field!r} must be {FIELD_SHAPES[field]} "
        f"(got {_short(data.get(field))})."
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan_runs(spec: SweepFile, source: Path) -> SweepPlan:
    """Expand ``spec`` into runs, building every run's config (so a bad value fails now)."""
    where = f"sweep file {str(source)!r}"
    _check_spec(spec, where)
    points = grid_points(spec.grid, where)
    runs = []
    for task in spec.task_names():
        layers = [spec.base, spec.per_task.get(task, {})]
        _import_task_module(layers, where)
        for point in points:
            for seed in spec.seed_list():
                run_dir = Path("runs", task, f"{point.slug}-s{seed}")
                config = _build(task, [*layers, point.overrides, {"seed": seed}], where, run_dir)
                runs.append(PlannedRun(task, point, seed, config, run_dir))
    name = spec.name if spec.name is not None else Path(source).stem
    configs = [run.config for run in runs]
    return SweepPlan(name, Path(source), tuple(runs), varying_keys(configs))


def _check_spec(spec: SweepFile, where: str) -> None:
    """The rules a type cannot say: one way to name tasks, known tasks, real seeds, no
    reserved keys."""
    if (spec.task is None) == (spec.tasks is None):
        raise ConfigError(f"{where} must name its tasks with either `task:` or `tasks:`.")
    tasks = spec.task_names()
    if not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"{where}: `tasks` must list at least one task, each once.")
    if spec.name is not None and (
        not re.fullmatch(r"[\w.-]+", spec.name) or spec.name in (".", "..")
    ):
        raise ConfigError(f"{where}: name {spec.name!r} must be a plain folder name.")
    seeds = spec.seed_list()
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"{where}: `seeds` must be a positive count or a list of distinct seeds >= 0."
        )
    for task in spec.per_task:
        if task not in tasks:
            raise ConfigError(f"{where}: per_task names {task!r}, which is not among its tasks.")
    layers = {"base": spec.base, **{f"per_task.{t}": o for t, o in spec.per_task.items()}}
    for origin, overrides in layers.items():
        _check_reserved(overrides, origin, where)


def _check_reserved(overrides: Mapping[str, Any], origin: str, where: str) -> None:
    for key, field in RESERVED_KEYS.items():
        if key in overrides:
            raise ConfigError(f"{where}: {origin} sets {key!r}, which only {field} may set.")


def _import_task_module(layers: Sequence[Mapping[str, Any]], where: str) -> None:
    """A user task is registered by the module the overrides name (as in ``tprog train``)."""
    modules = [layer["task_module"] for layer in layers if layer.get("task_module")]
    if modules:
        try:
            import_task_module(str(modules[-1]))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _build(task: str, layers: list[Mapping[str, Any]], where: str, run_dir: Path) -> RunConfig:
    try:
        get_task(task)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        return task_config(task, *layers)
    except ConfigError as exc:
        raise ConfigError(f"{where}, run {run_dir.relative_to('runs')}: {exc}") from None


def grid_points(grid: Mapping[str, Sequence[Any]], where: str) -> list[GridPoint]:
    """The cartesian product of the axes, in file order (the last axis varies fastest)."""
    axes = []
    for axis, values in grid.items():
        if not values:
            raise ConfigError(f"{where}: grid axis {axis!r} has no values.")
        axes.append([_axis_overrides(axis, value, where) for value in values])
    points = []
    for combination in itertools.product(*axes):
        overrides = {key: value for part in combination for key, value in part.items()}
        points.append(GridPoint(overrides, slug_for(overrides)))
    _check_distinct(points, where)
    return points


def _axis_overrides(axis: str, value: Any, where: str) -> dict[str, Any]:
    """What one value of one axis sets: the axis key itself, or a mapping of tied keys."""
    if not isinstance(value, Mapping):
        overrides = {axis: value}
    elif value:
        overrides = dict(value)
    else:
        raise ConfigError(f"{where}: grid axis {axis!r} has an empty mapping among its values.")
    _check_reserved(overrides, f"grid axis {axis!r}", where)
    return overrides


def _check_distinct(points: Sequence[GridPoint], where: str) -> None:
    seen: dict[str, GridPoint] = {}
    for point in points:
        if point.slug in seen:
            raise ConfigError(
                f"{where}: grid points {dict(seen[point.slug].overrides)} and "
                f"{dict(point.overrides)} would share the folder {point.slug!r}; "
                "make their values distinct."
            )
        seen[point.slug] = point


def slug_for(overrides: Mapping[str, Any]) -> str:
    """A short, readable folder name for a grid point, e.g. ``layers3-heads_cat4-lr0.05``:
    each key's last part (a leading ``n_``, "number of", dropped) followed by its value;
    ``default`` for the empty grid."""
    if not overrides:
        return "default"
    parts = []
    for key, value in overrides.items():
        leaf = key.rsplit(".", 1)[-1].removeprefix("n_")
        parts.append(leaf + re.sub(r"[^\w.+-]", "_", str(value)))
    slug = "-".join(parts)
    if len(slug) > SLUG_MAX:
        digest = hashlib.sha256(slug.encode()).hexdigest()[:8]
        slug = f"{slug[: SLUG_MAX - 9]}-{digest}"
    return slug


def flat_config(config: RunConfig) -> dict[str, Any]:
    """A config as dotted keys, in the order `known_keys` lists them."""
    tree = config.model_dump(mode="json")
    flat = {}
    for key in known_keys():
        section, _, leaf = key.partition(".")
        flat[key] = tree[section][leaf] if leaf else tree[section]
    return flat


def varying_keys(configs: Sequence[RunConfig]) -> tuple[str, ...]:
    """The dotted keys, other than task and seed, whose value is not the same in every run."""
    flats = [flat_config(config) for config in configs]
    return tuple(
        key
        for key in known_keys()
        if key not in ("task", "seed")
        and len({json.dumps(flat[key], sort_keys=True) for flat in flats}) > 1
    )
