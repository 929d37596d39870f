"""``task_features``: the feature comparison of base with every task final, side by side.

In a run of several tasks the features stage compares ``features.base`` with each task's
final checkpoint (:func:`tasks.features.run.comparisons`). The full groups of
:mod:`.results` (histograms, cards, intervals) hold the run's main comparison; this module
gathers the per-layer headline numbers of every comparison into one group,
``task_features`` (checkpoint, layer, quantity), with the ``task``, ``seed`` and ``method``
coordinates of the similarity groups on ``checkpoint``, so
``tf.sel(checkpoint=tf.task == "topic")`` selects a task.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from layerdrift.storage.results_schema import RESULT_GROUPS

# Where each quantity of the group's schema sits in a per-layer result dict: (key, label
# inside it, or None for a number).
SOURCE_OF: dict[str, tuple[str, str | None]] = {
    "matched_fraction": ("matched_fraction", None),
    "matched_fraction_control": ("matched_fraction_control", None),
    "transfer_fvu_finetuned_on_base": ("transfer_fvu", "finetuned_on_base"),
    "transfer_fvu_base_on_finetuned": ("transfer_fvu", "base_on_finetuned"),
    "transfer_fvu_control": ("transfer_fvu_control", None),
    "crosscoder_base_only": ("crosscoder_counts", "base_only"),
    "crosscoder_shared": ("crosscoder_counts", "shared"),
    "crosscoder_finetuned_only": ("crosscoder_counts", "finetuned_only"),
    "surviving_base_only": ("crosscoder_surviving", "base_only"),
    "surviving_finetuned_only": ("crosscoder_surviving", "finetuned_only"),
    "accuracy_recovered_base_on_finetuned": ("transfer_accuracy_recovered", "base_on_finetuned"),
}
GROUP = RESULT_GROUPS["task_features"]
QUANTITY_NAMES: tuple[str, ...] = GROUP.labels["quantity"]


def _value(result: dict, key: str, label: str | None) -> float:
    value = result.get(key)
    if label is not None:
        value = (value or {}).get(label)
    return float("nan") if value is None else float(value)


def task_features_table(
    per_comparison: dict[str, list[dict]], coordinates: dict[str, list]
) -> xr.DataArray:
    """``task_features`` (checkpoint, layer, quantity) float64, built and checked by its
    schema entry.

    ``per_comparison`` maps each compared checkpoint label, in order, to its per-layer
    result dicts (:func:`tasks.features.run.compare_features_for_run`); ``coordinates`` the
    ``task``, ``seed`` and ``method`` of those labels (:func:`tasks.study.task_coordinates`).
    A layer one comparison lacks (no SAE there) is NaN.
    """
    labels = list(per_comparison)
    layers = sorted({int(r["layer"]) for results in per_comparison.values() for r in results})
    values = np.full((len(labels), len(layers), len(QUANTITY_NAMES)), np.nan)
    for i, label in enumerate(labels):
        for result in per_comparison[label]:
            j = layers.index(int(result["layer"]))
            values[i, j] = [_value(result, *SOURCE_OF[name]) for name in QUANTITY_NAMES]
    return GROUP.new(
        values,
        checkpoint=labels,
        layer=layers,
        task=("checkpoint", list(coordinates["task"])),
        seed=("checkpoint", np.asarray(coordinates["seed"], dtype=np.int64)),
        method=("checkpoint", list(coordinates["method"])),
    )
