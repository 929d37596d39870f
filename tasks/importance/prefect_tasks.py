"""Thin Prefect wrappers over the importance stage (the flow sets caching options)."""

from __future__ import annotations

from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.importance.freeze_grid import fit_variant, write_freeze_grid
from layerdrift.tasks.importance.stage import compute_importance, refresh_drift_importance
from layerdrift.tasks.retry import retry_unless_bad_input


@task(
    name="importance", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input
)
def importance_task(run: RunDir, cfg: RunConfig) -> None:
    """Prefect task: :func:`tasks.importance.compute_importance` (reversion, then its
    correlation with drift); a retry keeps a ``layer_reversion`` already written (in a run of
    several tasks, every task final's rows already written)."""
    compute_importance(run, cfg)


@task(name="drift-importance", retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_unless_bad_input)  # fmt: skip
def refresh_drift_importance_task(run: RunDir, cfg: RunConfig) -> None:
    """Prefect task: :func:`tasks.importance.refresh_drift_importance`, the correlations again
    once the features stage has written its transfer FVUs."""
    refresh_drift_importance(run, cfg)


@task(
    name="freeze-variant",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def freeze_variant_task(run: RunDir, cfg: RunConfig, k: int) -> None:
    """Prefect task: :func:`tasks.importance.fit_variant`, the freeze grid's fine-tune with
    layers 0 … k frozen; a retry resumes it from its last checkpoint."""
    fit_variant(run, cfg, k)


@task(
    name="freeze-grid", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input
)
def freeze_grid_task(run: RunDir, cfg: RunConfig) -> None:
    """Prefect task: :func:`tasks.importance.write_freeze_grid` (the rows into results.zarr)."""
    write_freeze_grid(run, cfg)
