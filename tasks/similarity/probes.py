"""Linear probes: where the task information lives, per checkpoint and layer.

Each example is pooled two ways, the mean of its tokens (a segment sum over
``example_of_token``, done per token block by Dask) and its first token ([CLS]); a
standardised logistic regression is scored by stratified, seeded k-fold cross-validation.
Beside it, the same probe on a control task (the labels shuffled) and the majority-class
rate tell how much of the accuracy the representation explains.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")


def _segment_sum_block(acts: np.ndarray, seg: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(c, l, t, h) block, local segment ids (t,) sorted, weights (t,) → (c, l, k, h) sums."""
    out = np.empty((*acts.shape[:2], int(seg.max()) + 1, acts.shape[3]), dtype=np.float64)
    starts = _starts(seg)
    for c in range(acts.shape[0]):
        for layer in range(acts.shape[1]):
            w = acts[c, layer].astype(np.float64) * weight[:, None]
            out[c, layer] = np.add.reduceat(w, starts, axis=0)
    return out


def _starts(seg: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])


def pooled_representations(
    ds: xr.Dataset, token_mask: np.ndarray | None = None, scheduler: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled and [CLS] vectors, each float32 (checkpoint, layer, example, hidden).

    ``token_mask`` (token,) bool leaves tokens out of the mean (e.g. special tokens); an
    example with no token left gets zeros. [CLS] is the token at ``token_start``.
    """
    acts = ds["activations"].data.rechunk({0: 1, 1: 1, 3: -1})
    example = np.asarray(ds["example_of_token"].values, dtype=np.int64)
    n_examples = ds.sizes["example"]
    weight = np.ones(example.size) if token_mask is None else token_mask.astype(np.float64)
    bounds = np.cumsum([0, *acts.chunks[2]])
    parts, first_example = [], []
    for i in range(len(acts.chunks[2])):
        seg = example[bounds[i] : bounds[i + 1]]
        local = np.searchsorted(np.unique(seg), seg)
        first_example.append(np.unique(seg))
        parts.append(
            da.map_blocks(
                _segment_sum_block,
                acts.blocks[:, :, i],
                local,
                weight[bounds[i] : bounds[i + 1]],
                chunks=(acts.chunks[0], acts.chunks[1], (int(local.max()) + 1,), acts.chunks[3]),
                dtype=np.float64,
            )
        )
    starts = np.asarray(ds["token_start"].values, dtype=np.int64)
    cls = acts[:, :, starts, :]
    sums, cls_values = dask.compute(parts, cls, scheduler=scheduler)
    total = np.zeros((acts.shape[0], acts.shape[1], n_examples, acts.shape[3]))
    for ids, part in zip(first_example, sums, strict=True):
        total[:, :, ids] += part
    counts = np.bincount(example, weights=weight, minlength=n_examples)
    mean = total / np.maximum(counts, 1.0)[None, None, :, None]
    return mean.astype(np.float32), np.asarray(cls_values, dtype=np.float32)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> float:
    """Mean stratified k-fold accuracy of a standardised logistic regression.

    ``features`` (example, hidden), ``labels`` (example,). NaN (with a warning) when a class
    has fewer examples than folds or there is a single class.
    """
    classes, counts = np.unique(labels, return_counts=True)
    if classes.size < 2 or counts.min() < folds:
        logger.warning(
            "probe skipped: classes %s have %s examples, fewer than %d folds",
            classes.tolist(),
            counts.tolist(),
            folds,
        )
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, features, labels, cv=cv).mean())


def shuffled_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """The control task's labels: ``labels`` (example,) permuted with a seeded generator.

    Like Hewitt & Liang's (2019) control tasks, it keeps the label distribution and breaks
    the link to the input, so a probe that scores well on it memorises rather than reads.
    """
    return np.random.default_rng(seed).permutation(labels)


def majority_rate(labels: np.ndarray) -> float:
    """The share of the most frequent label: the accuracy of always guessing it."""
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / counts.sum())


def _fit_all(
    pooled: tuple[np.ndarray, ...], label_sets: list[np.ndarray], folds: int, seed: int
) -> np.ndarray:
    """CV accuracy (labels, checkpoint, layer, pooling) of every probe, in worker processes.

    ``pooled`` are the (checkpoint, layer, example, hidden) features per pooling, already
    restricted to the chosen examples. Each fit is a short L-BFGS run whose Python overhead
    holds the GIL, so the probes go to processes, one per core.
    """
    n_ckpt, n_layer = pooled[0].shape[:2]
    jobs = [
        (k, c, layer, p)
        for k in range(len(label_sets))
        for c in range(n_ckpt)
        for layer in range(n_layer)
        for p in range(len(pooled))
    ]
    run = delayed(probe_accuracy)
    scores = Parallel(n_jobs=min(len(jobs), os.cpu_count() or 1))(
        run(pooled[p][c, layer], label_sets[k], folds, seed)
        for k, c, layer, p in tqdm(jobs, total=len(jobs), desc="probes", leave=False)
    )
    out = np.full((len(label_sets), n_ckpt, n_layer, len(pooled)), np.nan)
    for (k, c, layer, p), score in zip(jobs, scores, strict=True):
        out[k, c, layer, p] = score
    return out


def probe_results(
    ds: xr.Dataset,
    folds: int,
    seed: int,
    examples: Sequence[int] | None = None,
    token_mask: np.ndarray | None = None,
    scheduler: Any = None,
    control: bool = True,
) -> dict[str, xr.DataArray]:
    """Probes on the true labels and on the control task, and the majority-class rate.

    Returns ``probe_accuracy`` and (with ``control``) ``probe_control_accuracy``
    (checkpoint, layer, pooling), the same probe and folds on :func:`shuffled_labels`, and
    ``majority_rate`` (a scalar), for the store's examples (or a subset). Selectivity is
    accuracy minus control accuracy.
    """
    mean, cls = pooled_representations(ds, token_mask, scheduler)
    labels = np.asarray(ds["label"].values)
    chosen = np.arange(labels.size) if examples is None else np.asarray(list(examples))
    labels = labels[chosen]
    label_sets = [labels, shuffled_labels(labels, seed)] if control else [labels]
    scores = _fit_all((mean[:, :, chosen], cls[:, :, chosen]), label_sets, folds, seed)
    attrs = {"folds": folds, "seed": seed, "model": "StandardScaler + LogisticRegression"}
    coords = {
        "checkpoint": ds["checkpoint"].values.astype(object),
        "layer": ds["layer"].values,
        "pooling": np.array(POOLINGS, dtype=object),
    }
    dims = ("checkpoint", "layer", "pooling")
    control_attrs = {**attrs, "labels": "the probe labels permuted with the seed (control task)"}
    out = {
        "probe_accuracy": xr.DataArray(scores[0], dims=dims, coords=coords, attrs=attrs),
        "majority_rate": xr.DataArray(
            majority_rate(labels), attrs={"definition": "share of the most frequent label"}
        ),
    }
    if control:
        out["probe_control_accuracy"] = xr.DataArray(
            scores[1], dims=dims, coords=coords, attrs=control_attrs
        )
    return out


def probe_table(
    ds: xr.Dataset,
    folds: int,
    seed: int,
    examples: Sequence[int] | None = None,
    token_mask: np.ndarray | None = None,
    scheduler: Any = None,
) -> xr.DataArray:
    """Probe accuracy (checkpoint, layer, pooling) for the store's examples (or a subset)."""
    results = probe_results(ds, folds, seed, examples, token_mask, scheduler, control=False)
    return results["probe_accuracy"]
