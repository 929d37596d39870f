"""Which pairs to measure, and the labelled tables built from their moments."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from layerdrift.tasks.similarity.accumulate import Pair, Rep
from layerdrift.tasks.similarity.metrics import METRICS, all_metrics, metrics_both_ways
from layerdrift.tasks.similarity.moments import CrossMoments, SelfMoments, self_as_cross

REFERENCES = ("base", "previous")
RANDOM = "random"  # the reference of a seeded random copy of the model (the floor)
BOUNDS = ("low", "high")
T = TypeVar("T")
U = TypeVar("U")


def checkpoint_pairs(
    n_checkpoints: int,
    layer: int,
    random: int | None = None,
    previous: Sequence[int | None] | None = None,
) -> list[Pair]:
    """The pairs of the ``similarity`` table at one layer: every checkpoint against
    checkpoint 0 (base), against the previous one and, when ``random`` (the random
    reference's index along the checkpoint axis) is given, against it; ``(a, a)`` asks only
    for self moments. ``previous[c]`` is the index before checkpoint c (in a run of several
    tasks, the one before it in its series); by default c - 1."""
    pairs: list[Pair] = []
    for c in range(n_checkpoints):
        before = _before(c, previous)
        pairs += [key for key in reference_keys(c, layer, random, before) if key is not None]
    return list(dict.fromkeys(pairs))


def _before(c: int, previous: Sequence[int | None] | None) -> int | None:
    if previous is not None:
        return previous[c]
    return c - 1 if c >= 1 else None


def cross_pairs(indices: Sequence[tuple[int, int]], layer: int) -> list[Pair]:
    """The pairs (X = first, Y = second) of two checkpoints' states at the same ``layer``."""
    return [((a, layer), (b, layer)) for a, b in indices]


def references(random: int | None) -> tuple[str, ...]:
    """The ``reference`` labels of the ``similarity`` tables."""
    return REFERENCES if random is None else (*REFERENCES, RANDOM)


def reference_keys(
    c: int, layer: int, random: int | None, before: int | None = -1
) -> list[Pair | None]:
    """Per label of :func:`references`, the pair (X = reference, Y = checkpoint ``c``) at
    ``layer``; None where there is none (the first checkpoint has no previous). ``before``
    is the previous checkpoint's index (-1: c - 1)."""
    if before == -1:
        before = _before(c, None)
    keys: list[Pair | None] = [((0, layer), (c, layer))]
    keys.append(((before, layer), (c, layer)) if before is not None else None)
    if random is not None:
        keys.append(((random, layer), (c, layer)))
    return keys


def layer_pairs(n_layers: int, layer: int, layer_checkpoints: list[int]) -> list[Pair]:
    """The pairs of the ``layer_similarity`` table from one layer to every later layer."""
    return [
        ((c, layer), (c, other)) for c in layer_checkpoints for other in range(layer + 1, n_layers)
    ]


def similarity_pairs(n_checkpoints: int, n_layers: int, layer_checkpoints: list[int]) -> list[Pair]:
    """Every pair the run needs, ordered layer by layer so that passes share reads.

    Per layer l: :func:`checkpoint_pairs`, then, for each checkpoint index in
    ``layer_checkpoints``, layer l against every later layer (:func:`layer_pairs`).
    """
    pairs: list[Pair] = []
    for layer in range(n_layers):
        pairs += checkpoint_pairs(n_checkpoints, layer)
        pairs += layer_pairs(n_layers, layer, layer_checkpoints)
    return list(dict.fromkeys(pairs))


def parallel_map(fn: Callable[[T], U], items: Iterable[T]) -> list[U]:
    """``[fn(i) for i in items]`` on one thread per core, BLAS single-threaded in each.

    The metrics are LAPACK calls on d×d matrices that release the GIL; one thread each
    beats multi-threaded LAPACK on one matrix at a time at these sizes.
    """
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(item) for item in items]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def pair_metrics(
    selves: dict[Rep, SelfMoments], crosses: dict[Pair, CrossMoments], both_ways: bool = False
) -> dict[Pair, np.ndarray]:
    """Metrics (len(METRICS),) of each pair (X = a, Y = b) in ``crosses``.

    With ``both_ways``, pairs within one checkpoint (layer pairs) also get (b, a).
    Representations are decomposed first, then the pairs, each spread over the cores.
    """
    used = {r for pair in crosses for r in pair}
    parallel_map(lambda r: selves[r].eigen, sorted(used))

    def one(item: tuple[Pair, CrossMoments]) -> tuple[np.ndarray, np.ndarray | None]:
        (a, b), xy = item
        return metrics_both_ways(selves[a], selves[b], xy, reverse=both_ways and a[0] == b[0])

    out: dict[Pair, np.ndarray] = {}
    results = parallel_map(one, crosses.items())
    for (a, b), (forward, backward) in zip(crosses, results, strict=True):
        out[(a, b)] = forward
        if backward is not None:
            out[(b, a)] = backward
    return out


def self_metrics(selves: dict[Rep, SelfMoments]) -> dict[Pair, np.ndarray]:
    """Metrics of each representation with itself (the tables' diagonals)."""
    values = parallel_map(lambda s: all_metrics(s, s, self_as_cross(s)), selves.values())
    return {(r, r): v for r, v in zip(selves, values, strict=True)}


def similarity_table(
    checkpoints: list[str],
    layers: np.ndarray,
    values: dict[Pair, np.ndarray],
    random: int | None = None,
    previous: Sequence[int | None] | None = None,
) -> xr.DataArray:
    """``similarity`` (reference, checkpoint, layer, metric); ``previous`` of the first is NaN.

    ``values`` maps ((checkpoint, layer) of X, of Y) to the metrics of that pair; ``random``
    is the random reference's checkpoint index (its row is then ``random``).
    """
    names = references(random)
    out = np.full((len(names), len(checkpoints), len(layers), len(METRICS)), np.nan)
    for c in range(len(checkpoints)):
        for li in range(len(layers)):
            for ref, key in enumerate(reference_keys(c, li, random, _before(c, previous))):
                if key is not None:
                    out[ref, c, li] = values[key]
    return xr.DataArray(
        out,
        dims=("reference", "checkpoint", "layer", "metric"),
        coords={
            "reference": np.array(names, dtype=object),
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


def similarity_interval_table(
    checkpoints: list[str],
    layers: np.ndarray,
    values: dict[Pair, np.ndarray],
    intervals: dict[Pair, np.ndarray],
    attrs: dict,
    random: int | None = None,
    previous: Sequence[int | None] | None = None,
) -> xr.DataArray:
    """``similarity_ci`` (reference, checkpoint, layer, metric, bound): the ``similarity``
    table's intervals; a checkpoint against itself gets its value as both bounds."""
    names = references(random)
    out = np.full((len(names), len(checkpoints), len(layers), len(METRICS), len(BOUNDS)), np.nan)
    for c in range(len(checkpoints)):
        for li in range(len(layers)):
            for ref, key in enumerate(reference_keys(c, li, random, _before(c, previous))):
                if key is None:
                    continue
                same = key[0] == key[1]
                out[ref, c, li] = np.stack([values[key]] * 2, -1) if same else intervals[key].T
    return xr.DataArray(
        out,
        dims=("reference", "checkpoint", "layer", "metric", "bound"),
        coords={
            "reference": np.array(names, dtype=object),
            "checkpoint": np.array(checkpoints, dtype=object),
            "layer": layers,
            "metric": np.array(METRICS, dtype=object),
            "bound": np.array(BOUNDS, dtype=object),
        },
        name="similarity_ci",
        attrs=attrs,
    )


def cross_similarity_table(
    names: list[str],
    firsts: list[str],
    seconds: list[str],
    kinds: list[str],
    layers: np.ndarray,
    keys: list[list[Pair]],
    values: dict[Pair, np.ndarray],
) -> xr.DataArray:
    """``cross_similarity`` (pair, layer, metric): two checkpoints (X = ``first``, Y =
    ``second``) compared at the same layer; ``keys[p][l]`` is pair p's key at layer l."""
    out = np.array([[values[key] for key in per_layer] for per_layer in keys], dtype=float)
    return xr.DataArray(
        out.reshape(len(names), len(layers), len(METRICS)),
        dims=("pair", "layer", "metric"),
        coords=_pair_coords(names, firsts, seconds, kinds)
        | {
            "layer": layers,
            "metric": np.array(METRICS, dtype=object),
        },
        name="cross_similarity",
    )


def cross_interval_table(
    table: xr.DataArray, keys: list[list[Pair]], intervals: dict[Pair, np.ndarray], attrs: dict
) -> xr.DataArray:
    """``cross_similarity_ci`` (pair, layer, metric, bound): ``table``'s 95% intervals."""
    out = np.array([[intervals[key].T for key in per_layer] for per_layer in keys], dtype=float)
    out = out.reshape(*table.shape, len(BOUNDS))
    return xr.DataArray(
        out,
        dims=(*table.dims, "bound"),
        coords={**{k: v for k, v in table.coords.items()}, "bound": np.array(BOUNDS, dtype=object)},
        name="cross_similarity_ci",
        attrs=attrs,
    )


def _pair_coords(names, firsts, seconds, kinds) -> dict[str, tuple]:
    return {
        "pair": np.array(names, dtype=object),
        "first": ("pair", np.array(firsts, dtype=object)),
        "second": ("pair", np.array(seconds, dtype=object)),
        "kind": ("pair", np.array(kinds, dtype=object)),
    }
