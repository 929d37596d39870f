"""Task-specific latents: how well each latent's per-example maximum separates the labels.

For every latent, the score of a probe example is the latent's maximum activation over the
example's tokens; its AUROC against the label (one-vs-rest beyond two classes, keeping the
class furthest from chance) says how task-specific it is. AUROC >= 0.75 or <= 0.25 counts as
task-specific by default.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata


def segment_max(
    values: torch.Tensor, segment: torch.Tensor, n_segments: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Running maximum of ``values`` [n, d] per segment id ``segment`` [n]: [n_segments, d].

    Pass the previous result as ``out`` to accumulate over batches; segments never seen
    hold ``-inf``.
    """
    if values.shape[0] != segment.shape[0]:
        raise ValueError(f"{values.shape[0]} rows of values but {segment.shape[0]} segment ids")
    if out is None:
        out = torch.full((n_segments, values.shape[1]), -torch.inf, dtype=values.dtype)
    out = out.to(values.device)
    index = segment.to(values.device, torch.int64)[:, None].expand_as(values)
    return out.scatter_reduce(0, index, values, reduce="amax", include_self=True)


def _binary_auroc(ranks: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC per column from average ``ranks`` [n, d] and a mask [n]."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs examples of more than one class")
    rank_sum = ranks[positive].sum(axis=0)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def latent_auroc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC of each latent's per-example score against the label.

    ``scores`` is [n_examples, d_sae] and ``labels`` [n_examples] (any values, >= 2 classes).
    With two classes the positive class is the larger label. With more, each latent gets the
    one-vs-rest AUROC of the class furthest from 0.5. Ties count half (as
    ``sklearn.metrics.roc_auc_score``; equal to it up to float error). Returns
    ``(auroc [d_sae], class_index [d_sae])``, class_index into ``np.unique(labels)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be [n_examples, d_sae] and labels [n_examples], got {scores.shape} "
            f"and {labels.shape}"
        )
    classes = np.unique(labels)
    if classes.size < 2:
        raise ValueError(f"AUROC needs at least two classes, the labels hold {classes.tolist()}")
    scores = np.nan_to_num(scores, nan=0.0, neginf=0.0)
    ranks = rankdata(scores, axis=0, method="average")
    if classes.size == 2:
        auroc = _binary_auroc(ranks, labels == classes[1])
        return auroc, np.ones(auroc.shape, dtype=np.int64)
    per_class = np.stack([_binary_auroc(ranks, labels == c) for c in classes])  # [C, d]
    best = np.argmax(np.abs(per_class - 0.5), axis=0)
    return per_class[best, np.arange(per_class.shape[1])], best


def task_specific_mask(auroc: np.ndarray, high: float = 0.75, low: float = 0.25) -> np.ndarray:
    """Boolean mask of latents with AUROC >= high or <= low: [d_sae]."""
    auroc = np.asarray(auroc)
    return (auroc >= high) | (auroc <= low)


def task_specific_fraction(auroc: np.ndarray, high: float = 0.75, low: float = 0.25) -> float:
    """Share of latents that are task-specific (NaN for an empty set of latents)."""
    auroc = np.asarray(auroc)
    if auroc.size == 0:
        return float("nan")
    return float(task_specific_mask(auroc, high, low).mean())
