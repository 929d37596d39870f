"""Which pairs to measure, and the labelled tables built from their moments."""

from __future__ import annotations

import numpy as np
import xarray as xr

from layerdrift.tasks.similarity.accumulate import Pair, Rep
from layerdrift.tasks.similarity.metrics import METRICS, all_metrics
from layerdrift.tasks.similarity.moments import CrossMoments, SelfMoments, self_as_cross

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
    selves: dict[Rep, SelfMoments], crosses: dict[Pair, CrossMoments], both_ways: bool = False
) -> dict[Pair, np.ndarray]:
    """Metrics (len(METRICS),) of each pair (X = a, Y = b) in ``crosses``.

    With ``both_ways``, pairs within one checkpoint (layer pairs) also get (b, a).
    """
    out: dict[Pair, np.ndarray] = {}
    for (a, b), xy in crosses.items():
        out[(a, b)] = all_metrics(selves[a], selves[b], xy)
        if both_ways and a[0] == b[0]:
            out[(b, a)] = all_metrics(selves[b], selves[a], xy.swapped())
    return out


def self_metrics(selves: dict[Rep, SelfMoments]) -> dict[Pair, np.ndarray]:
    """Metrics of each representation with itself (the tables' diagonals)."""
    return {(r, r): all_metrics(s, s, self_as_cross(s)) for r, s in selves.items()}


def similarity_table(
    checkpoints: list[str], layers: np.ndarray, values: dict[Pair, np.ndarray]
) -> xr.DataArray:
    """``similarity`` (reference, checkpoint, layer, metric); ``previous`` of the first is NaN.

    ``values`` maps ((checkpoint, layer) of X, of Y) to the metrics of that pair.
    """
    out = np.full((2, len(checkpoints), len(layers), len(METRICS)), np.nan)
    for c in range(len(checkpoints)):
        for li in range(len(layers)):
            out[0, c, li] = values[((0, li), (c, li))]
            if c >= 1:
                out[1, c, li] = values[((c - 1, li), (c, li))]
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
    values: dict[Pair, np.ndarray],
) -> xr.DataArray:
    """``layer_similarity`` (checkpoint, layer, layer_other, metric): X = layer, Y = other."""
    n = len(layers)
    out = np.full((len(chosen), n, n, len(METRICS)), np.nan)
    for i, c in enumerate(chosen):
        for a in range(n):
            for b in range(n):
                out[i, a, b] = values[((c, a), (c, b))]
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
