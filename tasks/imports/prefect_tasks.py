"""Thin Prefect wrapper over importing given checkpoints (the flow sets caching options)."""

from __future__ import annotations

from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.imports.load import import_checkpoints
from layerdrift.tasks.retry import retry_unless_bad_input


@task(name="import", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def import_checkpoints_task(run: RunDir, cfg: RunConfig) -> list[str]:
    """Prefect task: :func:`tasks.imports.import_checkpoints`; returns the labels in order."""
    return import_checkpoints(run, cfg)
