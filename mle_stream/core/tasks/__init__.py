"""The tasks a model can have, by the name topologies and the wire give them. A new task is a
module beside these (a `Task` subclass, core/tasks/base.py) and one line in TASKS."""

from __future__ import annotations

from mle_stream.core.tasks.base import Task
from mle_stream.core.tasks.binary import Binary
from mle_stream.core.tasks.multiclass import Multiclass
from mle_stream.core.tasks.regression import Regression

TASKS: dict[str, Task] = {task.name: task for task in (Binary(), Multiclass(), Regression())}


def task_for(name: str) -> Task:
    """The task named `name`; ValueError names the known ones."""
    task = TASKS.get(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return task


__all__ = ["TASKS", "Task", "task_for"]
