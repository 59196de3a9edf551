"""Tasks: one pure generator per task, taking an explicit RNG."""

from tprog.tasks.domain import FramedStrings, InputDomain
from tprog.tasks.registry import (
    Example,
    Task,
    all_tasks,
    get_task,
    register_task,
    task_config,
)

__all__ = [
    "Example",
    "FramedStrings",
    "InputDomain",
    "Task",
    "all_tasks",
    "get_task",
    "register_task",
    "task_config",
]
