"""Prefect retries only what a second try can fix: one predicate, used by every stage task."""

from __future__ import annotations

import importlib

import pytest
from prefect import Task
from prefect.states import Failed

from layerdrift.storage.lock import StoreLockedError
from layerdrift.storage.rundir import RunConfigMismatchError
from layerdrift.storage.schema import ChunkMissingError, ChunkReadError, StoreMismatchError
from layerdrift.tasks.data import DatasetError
from layerdrift.tasks.retry import retry_unless_bad_input

STAGE_MODULES = (
    "layerdrift.tasks.data.prefect_tasks",
    "layerdrift.tasks.finetune.prefect_tasks",
    "layerdrift.tasks.extract.prefect_tasks",
    "layerdrift.tasks.similarity.run",
    "layerdrift.tasks.sae.run",
    "layerdrift.tasks.features.run",
    "layerdrift.tasks.report.prefect_tasks",
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
    assert len({task.name for task in tasks}) >= 10
    for task in tasks:
        if task.retries:
            assert task.retry_condition_fn is retry_unless_bad_input, task.name
