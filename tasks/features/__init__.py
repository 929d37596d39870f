"""Base vs fine-tuned features per layer (issue 6): SAE transfer, decoder matching,
crosscoders, task-specific latents and feature cards.

The flow calls :func:`feature_layers`, then :func:`compare_features_task` per layer, then
:func:`write_features_task`; tests call the plain functions.
"""

from layerdrift.tasks.features.config import FeaturesConfig
from layerdrift.tasks.features.run import (
    compare_features_for_run,
    compare_features_task,
    feature_layers,
    feature_results_written,
    features_complete,
    write_feature_results,
    write_features_task,
)

__all__ = [
    "FeaturesConfig",
    "compare_features_for_run",
    "compare_features_task",
    "feature_layers",
    "feature_results_written",
    "features_complete",
    "write_feature_results",
    "write_features_task",
]
