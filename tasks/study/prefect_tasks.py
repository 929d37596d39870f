"""Thin Prefect wrapper over fine-tuning one series of a run of several tasks."""

from __future__ import annotations

from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.retry import retry_unless_bad_input
from layerdrift.tasks.study.finetune import finetune_series


@task(
    name="finetune-series",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def finetune_series_task(run: RunDir, cfg: RunConfig, prefix: str) -> list[str]:
    """Prefect task: :func:`tasks.study.finetune_series`; a retry resumes the fine-tune."""
    return finetune_series(run, cfg, prefix)
