"""The importance stage: which layers the fine-tuned accuracy depends on.

``reversion`` swaps units (layers and head, as the model adapter's :func:`layer_parameters`
maps them) between the base and final checkpoints in memory and scores every variant on the
validation split; ``correlation`` ranks drift against the accuracy lost; ``recommend`` reads
the smallest set of layers worth fine-tuning off the reversion curves; ``run`` writes the
``layer_reversion`` and ``drift_importance`` groups of a run of one task, ``study`` those
and ``task_reversion`` and ``task_drift_importance`` of a run of several (every task final
against its own base); ``stage`` picks between the two; ``freeze_grid`` fine-tunes the task again
per k with layers 0 … k frozen and writes ``freeze_grid`` and ``freeze_similarity``;
``prefect_tasks`` wraps them for the flow.
"""

from layerdrift.tasks.importance.correlation import (
    MEASURES,
    accuracy_lost,
    correlations,
    drift_importance,
    layer_evidence,
)
from layerdrift.tasks.importance.freeze_grid import (
    NONE,
    fit_variant,
    freeze_grid_arrays,
    freeze_grid_complete,
    read_variant,
    variant_complete,
    variant_config,
    variant_similarity,
    write_freeze_grid,
)
from layerdrift.tasks.importance.prefect_tasks import (
    freeze_grid_task,
    freeze_variant_task,
    importance_task,
    refresh_drift_importance_task,
)
from layerdrift.tasks.importance.recommend import TARGET, Recommendation, recommend
from layerdrift.tasks.importance.reversion import (
    QUANTITIES,
    VARIANTS,
    base_weights,
    reversion_values,
    reverted_units,
    swapped,
)
from layerdrift.tasks.importance.run import layer_reversion, reversion_complete, unit_names
from layerdrift.tasks.importance.stage import (
    compute_importance,
    importance_complete,
    refresh_drift_importance,
)
from layerdrift.tasks.importance.study import (
    POOLED,
    TASK_DRIFT,
    TASK_REVERSION,
    main_series,
    series_base,
    task_reversion,
)

__all__ = [
    "MEASURES",
    "NONE",
    "POOLED",
    "QUANTITIES",
    "TARGET",
    "TASK_DRIFT",
    "TASK_REVERSION",
    "VARIANTS",
    "Recommendation",
    "accuracy_lost",
    "base_weights",
    "compute_importance",
    "correlations",
    "drift_importance",
    "fit_variant",
    "freeze_grid_arrays",
    "freeze_grid_complete",
    "freeze_grid_task",
    "freeze_variant_task",
    "importance_complete",
    "importance_task",
    "layer_evidence",
    "layer_reversion",
    "main_series",
    "read_variant",
    "recommend",
    "refresh_drift_importance",
    "refresh_drift_importance_task",
    "reversion_complete",
    "reversion_values",
    "reverted_units",
    "series_base",
    "swapped",
    "task_reversion",
    "unit_names",
    "variant_complete",
    "variant_config",
    "variant_similarity",
    "write_freeze_grid",
]
