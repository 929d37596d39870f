"""Base vs fine-tuned features per layer: SAE transfer, decoder matching, crosscoders,
task-specific latents and feature cards.

The flow calls, for each of :func:`comparisons` (base against ``features.finetuned``, then
in a run of several tasks every other task final), :func:`feature_layers`, then
:func:`compare_features_task` per layer (after :func:`train_crosscoders_on_dask_task` on a
cluster); then :func:`write_features_task`; tests call the plain functions.
"""

from layerdrift.tasks.features.prefect_tasks import (
    compare_features_task,
    train_crosscoders_on_dask_task,
    write_features_task,
)
from layerdrift.tasks.features.run import (
    compare_features_for_run,
    comparison_complete,
    comparison_pair,
    comparisons,
    crosscoder_complete,
    crosscoder_url,
    feature_layers,
    feature_results_written,
    features_complete,
    train_crosscoder_for_run,
    write_feature_results,
)

__all__ = [
    "compare_features_for_run",
    "compare_features_task",
    "comparison_complete",
    "comparison_pair",
    "comparisons",
    "crosscoder_complete",
    "crosscoder_url",
    "feature_layers",
    "feature_results_written",
    "features_complete",
    "train_crosscoder_for_run",
    "train_crosscoders_on_dask_task",
    "write_feature_results",
    "write_features_task",
]
