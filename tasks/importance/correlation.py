"""Does representational drift predict causal importance? One rank correlation per measure.

Importance of layer l is the validation accuracy lost when layer l alone is put back to base
(``layer_reversion``: final − revert). Drift of layer l, per measure:

- ``linear_cka``, ``cosine``: 1 − similarity(final, base) at hidden_states[l] (the
  ``similarity`` group, reference ``base``);
- ``transfer_fvu``: the FVU of base's SAE on the fine-tuned model's activations at layer l
  (the features stage's ``base_on_finetuned`` direction): how badly base's dictionary
  explains what the layer now computes. Only layers with both SAEs have it.

Spearman's rho over the layers 0 … L that have the measure (the head has no hidden state of
its own): +1 when the layers that moved most are exactly those that matter most. NaN when
fewer than three layers have it, or either side is constant (nothing to rank). In a run of
several tasks the same rho is taken per task final, and once over every (task, layer) point
pooled: does a layer that moved more, in any task, matter more?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.stats import spearmanr

SIMILARITY_MEASURES = ("linear_cka", "cosine")  # similarity metrics whose 1 − value is drift
TRANSFER_MEASURE = "transfer_fvu"
MEASURES = (*SIMILARITY_MEASURES, TRANSFER_MEASURE)
MIN_POINTS = 3  # Spearman over two points is ±1 whatever they are


@dataclass(frozen=True)
class LayerEvidence:
    """One fine-tune's per-layer drift and importance, aligned on ``layers``.

    ``drift`` maps each measure to its values over ``layers`` (NaN where a layer lacks the
    measure); ``lost`` is the accuracy lost by reverting each layer: arrays of shape (n,).
    """

    layers: tuple[int, ...]
    drift: dict[str, np.ndarray]
    lost: np.ndarray


def accuracy_lost(reversion: xr.DataArray) -> xr.DataArray:
    """Per layer 0 … L, final accuracy minus accuracy with that layer reverted: (layer,)."""
    accuracy = reversion.sel(quantity="accuracy").isel(layer=slice(0, -1))  # drop the head
    return accuracy.sel(variant="final") - accuracy.sel(variant="revert")


def layer_evidence(
    similarity: xr.DataArray,
    reversion: xr.DataArray,
    checkpoint: str,
    transfer_fvu: xr.DataArray | None = None,
) -> LayerEvidence:
    """Drift of ``checkpoint`` against base and its layers' importance, per layer 0 … L.

    ``similarity`` is the similarity stage's group (reference, checkpoint, layer, metric);
    ``reversion`` the checkpoint's ``layer_reversion`` (layer, variant, quantity);
    ``transfer_fvu`` the base SAE's FVU on this checkpoint's tokens, (layer,) over the layers
    with SAEs, or None when the run compared no features.
    """
    lost = accuracy_lost(reversion)
    layers = tuple(int(v) for v in lost.layer.values)
    sim = similarity.sel(reference="base", checkpoint=checkpoint, layer=list(layers))
    drift = {m: 1.0 - sim.sel(metric=m).values.astype(np.float64) for m in SIMILARITY_MEASURES}
    fvu = np.full(len(layers), np.nan)
    if transfer_fvu is not None:
        pairs = zip(transfer_fvu.layer.values, transfer_fvu.values, strict=True)
        have = {int(layer): float(value) for layer, value in pairs}
        fvu = np.array([have.get(layer, np.nan) for layer in layers])
    drift[TRANSFER_MEASURE] = fvu
    return LayerEvidence(layers, drift, lost.values.astype(np.float64))


def rank_correlation(drift: np.ndarray, lost: np.ndarray) -> float:
    """Spearman rho of (n,) drift against (n,) importance over the points where drift is
    known; NaN with fewer than :data:`MIN_POINTS` of them or a constant side."""
    known = ~np.isnan(drift) & ~np.isnan(lost)
    drift, lost = drift[known], lost[known]
    if len(drift) < MIN_POINTS or np.ptp(drift) == 0 or np.ptp(lost) == 0:
        return float("nan")
    return float(spearmanr(drift, lost).statistic)


def correlations(evidence: list[LayerEvidence]) -> np.ndarray:
    """Per measure of :data:`MEASURES`, rho over every (fine-tune, layer) point of
    ``evidence`` pooled (one fine-tune: over its layers): shape (measure,)."""
    lost = np.concatenate([e.lost for e in evidence])
    return np.array(
        [rank_correlation(np.concatenate([e.drift[m] for e in evidence]), lost) for m in MEASURES]
    )


def drift_importance(
    similarity: xr.DataArray,
    reversion: xr.DataArray,
    transfer_fvu: xr.DataArray | None = None,
    checkpoint: str = "final",
) -> xr.DataArray:
    """Spearman rho between drift and accuracy lost, one per measure: (measure,).

    Arguments as :func:`layer_evidence`; the ``layers`` attribute lists the layers ranked,
    ``transfer_layers`` those with a transfer FVU.
    """
    evidence = layer_evidence(similarity, reversion, checkpoint, transfer_fvu)
    return xr.DataArray(
        correlations([evidence]),
        dims=("measure",),
        coords={"measure": list(MEASURES)},
        attrs={"layers": list(evidence.layers), "transfer_layers": _transfer_layers(evidence)},
    )


def _transfer_layers(evidence: LayerEvidence) -> list[int]:
    known = ~np.isnan(evidence.drift[TRANSFER_MEASURE])
    return [layer for layer, k in zip(evidence.layers, known, strict=True) if k]
