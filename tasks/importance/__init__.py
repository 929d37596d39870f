"""The importance stage: which layers the fine-tuned accuracy depends on.

``reversion`` swaps units (layers and head, as the model adapter's :func:`layer_parameters`
maps them) between the base and final checkpoints in memory and scores every variant on the
validation split; ``correlation`` ranks drift against the accuracy lost; ``recommend`` reads
the smallest set of layers worth fine-tuning off the reversion curves; ``run`` writes the
``layer_reversion`` and ``drift_importance`` groups; ``freeze_grid`` fine-tunes the task again
per k with layers 0 … k frozen and writes ``freeze_grid`` and ``freeze_similarity``;
``prefect_tasks`` wraps them for the flow.
"""

from layerdrift.tasks.importance.correlation import MEASURES, accuracy_lost, drift_importance
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
from layerdrift.tasks.importance.run import (
    compute_importance,
    importance_complete,
    layer_reversion,
    reversion_complete,
    unit_names,
)

__all__ = [
    "MEASURES",
    "NONE",
    "QUANTITIES",
    "TARGET",
    "VARIANTS",
    "Recommendation",
    "accuracy_lost",
    "base_weights",
    "compute_importance",
    "drift_importance",
    "fit_variant",
    "freeze_grid_arrays",
    "freeze_grid_complete",
    "freeze_grid_task",
    "freeze_variant_task",
    "importance_complete",
    "importance_task",
    "layer_reversion",
    "read_variant",
    "recommend",
    "reversion_complete",
    "reversion_values",
    "reverted_units",
    "swapped",
    "unit_names",
    "variant_complete",
    "variant_config",
    "variant_similarity",
    "write_freeze_grid",
]
