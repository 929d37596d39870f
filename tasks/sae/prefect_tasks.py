"""Prefect tasks of the SAE stage: thin wrappers over :mod:`.run` (what the flow calls)."""

from __future__ import annotations

from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.dictionary.cluster import map_on_cluster
from layerdrift.tasks.retry import retry_unless_bad_input
from layerdrift.tasks.sae.run import evaluate_saes_for_run, train_sae_for_run


@task(
    name="train-sae",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    task_run_name="sae-{checkpoint}-layer-{layer}",
)
def train_sae_task(run: RunDir, config: RunConfig, checkpoint: str, layer: int) -> str:
    """Prefect task: :func:`train_sae_for_run`; a retry resumes from the last saved state."""
    return train_sae_for_run(run, config, checkpoint, layer)


@task(
    name="train-saes-on-dask",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def train_saes_on_dask_task(
    run: RunDir, config: RunConfig, targets: list[tuple[str, int]]
) -> list[str]:
    """Prefect task: :func:`train_sae_for_run` of every (checkpoint, layer) in ``targets``,
    each a task on the Dask cluster at ``config.dask_address``; returns the folder URLs."""
    calls = [(run, config, checkpoint, layer) for checkpoint, layer in targets]
    return map_on_cluster(config.dask_address, train_sae_for_run, calls)


@task(
    name="evaluate-saes",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def evaluate_saes_task(run: RunDir, config: RunConfig) -> dict:
    """Prefect task: :func:`evaluate_saes_for_run`; returns the evaluated SAEs and metrics."""
    return evaluate_saes_for_run(run, config)
