"""Thin Prefect wrapper over the data stage (the flow sets caching options)."""

from __future__ import annotations

from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data.splits import prepare_data
from layerdrift.tasks.retry import retry_unless_bad_input


@task(
    name="prepare-data", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_bad_input
)
def prepare_data_task(run: RunDir, cfg: RunConfig) -> str:
    """Prefect task: :func:`prepare_data`; returns the data folder's URL."""
    return prepare_data(run, cfg)
