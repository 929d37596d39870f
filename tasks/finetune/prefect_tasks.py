"""Thin Prefect wrappers over the fine-tuning stage (the flow sets caching options)."""

from __future__ import annotations

from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.finetune.train import finetune
from layerdrift.tasks.retry import retry_unless_bad_input


@task(name="finetune", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def finetune_task(run: RunDir, cfg: RunConfig) -> list[str]:
    """Prefect task: :func:`tasks.finetune.finetune`; returns the checkpoint labels in order.

    A retry resumes from the last complete checkpoint instead of starting over.
    """
    return finetune(run, cfg)
