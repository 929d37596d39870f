"""Runs of several tasks (``[[tasks]]``): one fine-tune per task and seed (a *series*) of
one base model, all recorded on one probe set in one activation store.

``series`` builds each series' config, the run's checkpoint labels (``<prefix>/<label>``),
the previous-checkpoint map and the pairs of series finals; ``finetune`` fine-tunes a series
in its own folder and adopts its checkpoints into the run; ``prefect_tasks`` wraps it.
"""

from layerdrift.tasks.study.finetune import (
    finetune_series,
    series_complete,
    series_labels,
    study_labels,
)
from layerdrift.tasks.study.prefect_tasks import finetune_series_task
from layerdrift.tasks.study.series import (
    PAIR_KINDS,
    FinalPair,
    Series,
    final_pairs,
    planned_labels,
    previous_indices,
    run_series,
    series_config,
    series_of,
    task_coordinates,
)

__all__ = [
    "PAIR_KINDS",
    "FinalPair",
    "Series",
    "final_pairs",
    "finetune_series",
    "finetune_series_task",
    "planned_labels",
    "previous_indices",
    "run_series",
    "series_complete",
    "series_config",
    "series_labels",
    "series_of",
    "study_labels",
    "task_coordinates",
]
