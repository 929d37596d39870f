"""Prefect retries only what a second try can fix: one predicate, used by every stage task."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest
from prefect import Task
from prefect.states import Failed

import layerdrift.tasks as tasks_package
from layerdrift.storage.lock import StoreLockedError
from layerdrift.storage.rundir import RunConfigMismatchError
from layerdrift.storage.schema import ChunkMissingError, ChunkReadError, StoreMismatchError
from layerdrift.tasks.data import DatasetError
from layerdrift.tasks.retry import retry_unless_bad_input

# Every module of the tasks package that defines Prefect tasks (found, so a new one counts).
STAGE_MODULES = tuple(
    info.name
    for info in pkgutil.walk_packages(tasks_package.__path__, "layerdrift.tasks.")
    if "@task" in Path(importlib.util.find_spec(info.name).origin).read_text()
)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (OSError("connection reset by peer"), True),
        (ConnectionResetError("reset"), True),
        (TimeoutError("read timed out"), True),
        (StoreLockedError("busy"), True),
        (ValueError("bad batch size"), False),
        (DatasetError("`hf:imdb` needs the `datasets` library"), False),
        (RunConfigMismatchError("other config"), False),
        (StoreMismatchError("other tokenizer"), False),
        (RuntimeError("CUDA error: device-side assert triggered"), False),
        (IndexError("index out of range in self"), False),
        (ImportError("No module named 'datasets'"), False),
        (FileNotFoundError("no checkpoint"), False),
        (PermissionError("read-only"), False),
        (ChunkReadError("checksum mismatch"), False),
        (ChunkMissingError("chunk file gone"), False),
    ],
)
def test_only_transient_errors_are_retried(error, retried):
    assert retry_unless_bad_input(None, None, Failed(data=error)) is retried


def test_every_stage_task_that_retries_uses_the_predicate():
    tasks = [
        value
        for module in STAGE_MODULES
        for value in vars(importlib.import_module(module)).values()
        if isinstance(value, Task)
    ]
    assert len({task.name for task in tasks}) >= 13, sorted(task.name for task in tasks)
    for task in tasks:
        if task.retries:
            assert task.retry_condition_fn is retry_unless_bad_input, task.name
