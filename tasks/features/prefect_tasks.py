"""Prefect tasks of the features stage: thin wrappers over :mod:`.run` (what the flow calls)."""

from __future__ import annotations

from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import CARDS_PATH, RunDir
from layerdrift.tasks.dictionary.cluster import map_on_cluster
from layerdrift.tasks.features.run import (
    compare_features_for_run,
    train_crosscoder_for_run,
    write_feature_results,
)
from layerdrift.tasks.retry import retry_unless_bad_input


@task(
    name="train-crosscoders-on-dask",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def train_crosscoders_on_dask_task(
    run: RunDir, config: RunConfig, layers: list[int], finetuned: str | None = None
) -> list[str]:
    """Prefect task: :func:`train_crosscoder_for_run` of every layer in ``layers`` (for the
    comparison with ``finetuned``, default ``features.finetuned``), each a task on the Dask
    cluster at ``config.dask_address``; returns the folder URLs."""
    calls = [(run, config, layer, finetuned) for layer in layers]
    return map_on_cluster(config.dask_address, train_crosscoder_for_run, calls)


@task(
    name="compare-features",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    task_run_name="features-layer-{layer}",
)
def compare_features_task(
    run: RunDir, config: RunConfig, layer: int, finetuned: str | None = None
) -> dict:
    """Prefect task: :func:`compare_features_for_run`; a retry resumes the crosscoder."""
    return compare_features_for_run(run, config, layer, finetuned)


@task(
    name="write-features",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def write_features_task(run: RunDir, config: RunConfig, per_layer: list[dict] | None = None) -> str:
    """Prefect task: :func:`write_feature_results`; returns the cards file URL."""
    write_feature_results(run, config, per_layer)
    return run.child_url(*CARDS_PATH)
