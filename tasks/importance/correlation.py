"""Does representational drift predict causal importance? One rank correlation per measure.

Drift of layer l is 1 − similarity(final, base) at hidden_states[l] (the ``similarity``
group, reference ``base``); importance is the validation accuracy lost when layer l alone
is put back to base (``layer_reversion``: final − revert). Spearman's rho over layers
0 … L (the head has no hidden state of its own): +1 when the layers that moved most are
exactly those that matter most. NaN when either side is constant (nothing to rank).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.stats import spearmanr

MEASURES = ("linear_cka", "cosine")  # similarity metrics whose 1 − value is the drift


def accuracy_lost(reversion: xr.DataArray) -> xr.DataArray:
    """Per layer 0 … L, final accuracy minus accuracy with that layer reverted: (layer,)."""
    accuracy = reversion.sel(quantity="accuracy").isel(layer=slice(0, -1))  # drop the head
    return accuracy.sel(variant="final") - accuracy.sel(variant="revert")


def drift_importance(similarity: xr.DataArray, reversion: xr.DataArray) -> xr.DataArray:
    """Spearman rho between drift (1 − metric, final vs base) and accuracy lost: (measure,).

    ``similarity`` is the similarity stage's group (reference, checkpoint, layer, metric).
    """
    lost = accuracy_lost(reversion)
    layers = [int(v) for v in lost.layer.values]
    sim = similarity.sel(reference="base", checkpoint="final", layer=layers)
    rho = []
    for measure in MEASURES:
        drift = 1.0 - sim.sel(metric=measure).values.astype(np.float64)
        constant = np.ptp(drift) == 0 or np.ptp(lost.values) == 0
        rho.append(np.nan if constant else float(spearmanr(drift, lost.values).statistic))
    return xr.DataArray(
        np.asarray(rho), dims=("measure",), coords={"measure": list(MEASURES)},
        attrs={"layers": layers},
    )  # fmt: skip
