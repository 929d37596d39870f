"""The importance stage's entry points, for a run of one task or of several.

A run of one task reverts its ``final`` toward ``base`` (:mod:`.run`); a run of several
reverts every task final toward its own base (:mod:`.study`). Either way the drift-importance
correlations are taken once the reversion is there, and again after the features stage,
when the transfer FVUs they also rank exist.
"""

from __future__ import annotations

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.importance.run import (
    compute_single_importance,
    refresh_single_drift_importance,
    single_importance_complete,
)
from layerdrift.tasks.importance.study import (
    compute_task_importance,
    task_importance_complete,
    write_task_drift_importance,
)


def compute_importance(run: RunDir, cfg: RunConfig) -> None:
    """The stage: the reversion groups (unless already complete), then the correlations."""
    if cfg.tasks:
        compute_task_importance(run, cfg)
    else:
        compute_single_importance(run, cfg)


def refresh_drift_importance(run: RunDir, cfg: RunConfig) -> None:
    """Take the drift-importance correlations again from what results.zarr holds now (after
    the features stage, so ``transfer_fvu`` joins the measures); milliseconds."""
    if cfg.tasks:
        write_task_drift_importance(run, cfg)
    else:
        refresh_single_drift_importance(run, cfg)


def importance_complete(run: RunDir, cfg: RunConfig) -> bool:
    """Whether the reversion and correlation groups are there, for the final checkpoints now
    on disk and this activation store."""
    if cfg.tasks:
        return task_importance_complete(run, cfg)
    return single_importance_complete(run)
