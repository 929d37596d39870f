"""Thin Prefect wrapper over the data stage (the flow sets caching options)."""

from __future__ import annotations

from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data.splits import prepare_data


@task(name="prepare-data", retries=1, retry_delay_seconds=2)
def prepare_data_task(run: RunDir, cfg: RunConfig) -> str:
    """Prefect task: :func:`prepare_data`; returns the data folder's URL."""
    return prepare_data(run, cfg)
