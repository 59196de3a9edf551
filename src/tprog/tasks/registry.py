"""The task registry: built-in tasks and the ones users add with `register_task`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tprog.config import DataConfig, RunConfig, build_config
from tprog.errors import ConfigError
from tprog.tasks.domain import DomainFactory, InputDomain

Example = tuple[list[str], list[str]]
# A generator draws one example: (input tokens, target labels) of equal length, where the
# target "<pad>" means "no prediction here" (ignored by loss and accuracy).
Generator = Callable[[np.random.Generator, DataConfig], Example]
TokenList = Sequence[str] | Callable[[DataConfig], Sequence[str]]


@dataclass(frozen=True)
class Task:
    name: str
    generate: Generator
    input_tokens: TokenList  # every token an input may hold, "<pad>" excluded
    labels: TokenList  # every target label, "<pad>" excluded
    causal: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)  # dotted config keys
    summary: str = ""
    # Every input the generator can produce, with pure targets (see `tprog.tasks.domain`);
    # None where the task does not declare one, and verification samples the generator instead.
    domain: DomainFactory | None = None

    def input_domain(self, data: DataConfig) -> InputDomain | None:
        return self.domain(data) if self.domain is not None else None

    def vocab_tokens(self, data: DataConfig) -> list[str]:
        tokens = self.input_tokens(data) if callable(self.input_tokens) else self.input_tokens
        return list(tokens)

    def label_tokens(self, data: DataConfig) -> list[str]:
        labels = self.labels(data) if callable(self.labels) else self.labels
        return list(labels)


_REGISTRY: dict[str, Task] = {}


def register_task(
    name: str,
    generate: Generator,
    *,
    input_tokens: TokenList,
    labels: TokenList,
    causal: bool = False,
    defaults: Mapping[str, Any] | None = None,
    summary: str = "",
    replace: bool = False,
    domain: DomainFactory | None = None,
) -> Task:
    """Add a task so that ``tprog train NAME`` (with ``--import``) and the library can use it.

    ``generate(rng, data_config)`` returns one ``(inputs, targets)`` pair of equal length;
    ``input_tokens``/``labels`` list (or compute from the data config) every possible input
    token and target label; ``defaults`` are dotted config keys, e.g. ``{"model.n_layers": 2}``.
    ``domain(data_config)``, optional, returns every input ``generate`` can produce (an
    `InputDomain`, e.g. `FramedStrings`), so that ``tprog verify`` can check a program on all of
    them rather than on a sample.
    """
    _load_builtins()  # so a user task can never silently shadow a built-in one
    if not name.isidentifier():
        raise ConfigError(f"task name {name!r} must be a Python identifier.")
    if name in _REGISTRY and not replace:
        raise ConfigError(f"a task named {name!r} is already registered.")
    task = Task(name, generate, input_tokens, labels, causal, dict(defaults or {}), summary, domain)
    _REGISTRY[name] = task
    return task


def get_task(name: str) -> Task:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown task {name!r}; known tasks: {known}.") from None


def task_config(name: str, *layers: Mapping[str, Any]) -> RunConfig:
    """Task ``name``'s paper configuration with ``layers`` of dotted overrides applied in order."""
    task = get_task(name)
    return build_config(task.name, [task.defaults, *layers])


def all_tasks() -> list[Task]:
    _load_builtins()
    return list(_REGISTRY.values())


_imported: set[str] = set()


def import_task_module(spec: str) -> None:
    """Import a module (dotted name) or a ``.py`` file that calls `register_task`.

    Idempotent: a file is executed once per process, however often its tasks are asked for.
    """
    key = str(Path(spec).resolve()) if spec.endswith(".py") else spec
    if key in _imported:
        return
    try:
        if spec.endswith(".py"):
            path = Path(key)
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None or not path.is_file():
                raise ConfigError(f"task module {spec!r} is not a readable Python file.")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
        _imported.add(key)
    except ImportError as exc:
        raise ConfigError(f"cannot import task module {spec!r}: {exc}.") from exc


_builtins_loaded = False


def _load_builtins() -> None:
    # Imported lazily so that importing the registry never pulls in every task definition;
    # the flag is set first because the built-in modules call register_task themselves.
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from tprog.tasks import induction, rasp  # noqa: F401
