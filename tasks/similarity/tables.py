"""Which pairs to measure, and the labelled tables built from their moments."""

from __future__ import annotations

import numpy as np
import xarray as xr

from tasks.similarity.accumulate import Pair, Rep
from tasks.similarity.metrics import METRICS, all_metrics
from tasks.similarity.moments import CrossMoments, SelfMoments, self_as_cross

REFERENCES = ("base", "previous")


def similarity_pairs(n_checkpoints: int, n_layers: int, layer_checkpoints: list[int]) -> list[Pair]:
    """Every pair the run needs, ordered layer by layer so that passes share reads.

    Per layer l: each checkpoint against checkpoint 0 (base) and against the previous one,
    then, for each checkpoint index in ``layer_checkpoints``, layer l against every later
    layer. ``(a, a)`` entries ask only for self moments.
    """
    pairs: list[Pair] = []
    for layer in range(n_layers):
        for c in range(n_checkpoints):
            pairs.append(((0, layer), (c, layer)))
            if c >= 1:
                pairs.append(((c - 1, layer), (c, layer)))
        for c in layer_checkpoints:
            pairs += [((c, layer), (c, other)) for other in range(layer + 1, n_layers)]
    return list(dict.fromkeys(pairs))


def pair_metrics(
    a: Rep, b: Rep, selves: dict[Rep, SelfMoments], crosses: dict[Pair, CrossMoments]
) -> np.ndarray:
    """All metrics of (X = a, Y = b), float64 (len(METRICS),), from whichever moments exist."""
    if a == b:
        return all_metrics(selves[a], selves[a], self_as_cross(selves[a]))
    if (a, b) in crosses:
        return all_metrics(selves[a], selves[b], crosses[(a, b)])
    return all_metrics(selves[a], selves[b], crosses[(b, a)].swapped())


def similarity_table(
    checkpoints: list[str],
    layers: np.ndarray,
    selves: dict[Rep, SelfMoments],
    crosses: dict[Pair, CrossMoments],
) -> xr.DataArray:
    """``similarity`` (reference, checkpoint, layer, metric); ``previous`` of the first is NaN."""
    out = np.full((2, len(checkpoints), len(layers), len(METRICS)), np.nan)
    for c in range(len(checkpoints)):
        for li in range(len(layers)):
            out[0, c, li] = pair_metrics((0, li), (c, li), selves, crosses)
            if c >= 1:
                out[1, c, li] = pair_metrics((c - 1, li), (c, li), selves, crosses)
    return xr.DataArray(
        out,
        dims=("reference", "checkpoint", "layer", "metric"),
        coords={
            "reference": np.array(REFERENCES, dtype=object),
            "checkpoint": np.array(checkpoints, dtype=object),
            "layer": layers,
            "metric": np.array(METRICS, dtype=object),
        },
        name="similarity",
    )


def layer_similarity_table(
    checkpoints: list[str],
    chosen: list[int],
    layers: np.ndarray,
    selves: dict[Rep, SelfMoments],
    crosses: dict[Pair, CrossMoments],
) -> xr.DataArray:
    """``layer_similarity`` (checkpoint, layer, layer_other, metric): X = layer, Y = other."""
    n = len(layers)
    out = np.full((len(chosen), n, n, len(METRICS)), np.nan)
    for i, c in enumerate(chosen):
        for a in range(n):
            for b in range(n):
                out[i, a, b] = pair_metrics((c, a), (c, b), selves, crosses)
    return xr.DataArray(
        out,
        dims=("checkpoint", "layer", "layer_other", "metric"),
        coords={
            "checkpoint": np.array([checkpoints[c] for c in chosen], dtype=object),
            "layer": layers,
            "layer_other": layers,
            "metric": np.array(METRICS, dtype=object),
        },
        name="layer_similarity",
    )
