"""The SAE stage's groups in ``results.zarr``.

- ``sae_metrics`` (checkpoint, layer, metric): :data:`SAE_METRICS` on held-out tokens, with
  attrs ``saes`` (the "<checkpoint>/<layer>" evaluated), ``heldout_fraction`` and
  ``store_generation``;
- ``sae_recovery`` (checkpoint, layer, quantity): :data:`RECOVERY_QUANTITIES`, the
  classifier's accuracy and loss clean, with the SAE spliced in and mean-ablated;
- ``latent_density`` (checkpoint, layer, bin): latents per bin of log10 held-out firing
  frequency (``bin`` the lower edge, ``bin_upper`` the upper one).
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from layerdrift.storage.results import write_result
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.dictionary import DENSITY_EDGES, density_histogram

logger = logging.getLogger(__name__)

SAE_METRICS = (
    "mse",
    "fvu",
    "explained_variance",
    "l0",
    "dead_fraction",
    "accuracy_recovered",
    "loss_recovered",
)
RECOVERY_QUANTITIES = (
    "accuracy_clean",
    "accuracy_sae",
    "accuracy_mean",
    "loss_clean",
    "loss_sae",
    "loss_mean",
)

Evaluated = dict[tuple[str, int], tuple[dict[str, float], np.ndarray]]


def sae_datasets(
    evaluated: Evaluated, heldout_fraction: float, generation: str
) -> dict[str, xr.DataArray]:
    """The three groups from ``{(checkpoint, layer): (metrics, firing frequency [d_sae])}``."""
    keys = list(evaluated)
    checkpoints = list(dict.fromkeys(c for c, _ in keys))
    layers = sorted({li for _, li in keys})
    shape = (len(checkpoints), len(layers))
    values = np.full((*shape, len(SAE_METRICS)), np.nan)
    recovery = np.full((*shape, len(RECOVERY_QUANTITIES)), np.nan)
    density = np.zeros((*shape, len(DENSITY_EDGES) - 1), dtype=np.int64)
    for (checkpoint, layer), (metrics, frequency) in evaluated.items():
        i, j = checkpoints.index(checkpoint), layers.index(layer)
        values[i, j] = [metrics.get(m, np.nan) for m in SAE_METRICS]
        recovery[i, j] = [metrics.get(q, np.nan) for q in RECOVERY_QUANTITIES]
        density[i, j] = density_histogram(frequency)
        rounded = {m: round(metrics.get(m, np.nan), 4) for m in SAE_METRICS}
        logger.info("SAE %s/%d: %s", checkpoint, layer, rounded)
    coords = {"checkpoint": checkpoints, "layer": layers}
    attrs = {
        "saes": [f"{c}/{li}" for c, li in keys],
        "heldout_fraction": heldout_fraction,
        "store_generation": generation,
    }
    dims = ("checkpoint", "layer")
    return {
        "sae_metrics": xr.DataArray(
            values, dims=(*dims, "metric"), coords={**coords, "metric": list(SAE_METRICS)},
            attrs=attrs,
        ),
        "sae_recovery": xr.DataArray(
            recovery, dims=(*dims, "quantity"),
            coords={**coords, "quantity": list(RECOVERY_QUANTITIES)},
        ),
        "latent_density": xr.DataArray(
            density, dims=(*dims, "bin"),
            coords={**coords, "bin": DENSITY_EDGES[:-1], "bin_upper": ("bin", DENSITY_EDGES[1:])},
            attrs={"description": "latents per bin of log10 held-out firing frequency; "
                   "the first bin also holds latents that never fire"},
        ),
    }  # fmt: skip


def write_sae_results(
    run: RunDir, evaluated: Evaluated, heldout_fraction: float, generation: str
) -> None:
    """Write ``sae_metrics``, ``sae_recovery`` and ``latent_density`` of ``evaluated``."""
    for name, array in sae_datasets(evaluated, heldout_fraction, generation).items():
        write_result(run.results(), name, array)
