"""Task registry: importing this package imports every task module, which registers itself."""

from __future__ import annotations

import importlib
import pkgutil

from transevolve.tasks.base import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TASKS,
    ExampleDataset,
    Task,
    TaskData,
    collate,
    get_task,
    register_task,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base",) and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "TASKS", "ExampleDataset", "Task", "TaskData", "collate", "get_task",
           "register_task"]
