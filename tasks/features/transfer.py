"""SAE transfer: how well one model's SAE reconstructs the other model's activations.

Fraction of variance unexplained over a set of tokens ``x`` [n, d_in] with reconstruction
``x_hat``::

    FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2

accumulated in one streaming pass (sums of squared error, of x and of ||x||^2), so it is
exact over any number of batches. ``base_on_finetuned`` is the base SAE applied to the
fine-tuned model's held-out activations; ``base_on_base`` is the base SAE's own FVU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

DIRECTIONS = ("base_on_finetuned", "finetuned_on_base", "base_on_base", "finetuned_on_finetuned")


@dataclass
class FVUAccumulator:
    """Streaming FVU: feed (x, x_hat) batches [n, d_in], read :attr:`fvu`."""

    n: int = 0
    sse: float = 0.0
    sum_sq: float = 0.0
    total: np.ndarray | None = field(default=None, repr=False)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Add a batch of activations ``x`` and reconstructions ``x_hat`` (same shape [n, d])."""
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
        x64, err = x.double(), (x - x_hat).double()
        self.n += x.shape[0]
        self.sse += float(err.pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        batch_total = x64.sum(dim=0).cpu().numpy()
        self.total = batch_total if self.total is None else self.total + batch_total

    @property
    def mse(self) -> float:
        """Mean squared error per token (summed over d_in)."""
        return self.sse / self.n if self.n else float("nan")

    @property
    def fvu(self) -> float:
        """SSE over the total variance around the mean (NaN without tokens or variance)."""
        if not self.n:
            return float("nan")
        variance = self.sum_sq - float(self.total @ self.total) / self.n
        return self.sse / variance if variance > 0 else float("nan")


def fvu(x: np.ndarray | torch.Tensor, x_hat: np.ndarray | torch.Tensor) -> float:
    """FVU of one set of activations [n, d_in] and reconstructions (direct formula)."""
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum())


def transfer_table(acc: dict[str, FVUAccumulator]) -> dict[str, float]:
    """FVU per direction of :data:`DIRECTIONS` (NaN where the accumulator is missing)."""
    return {d: acc[d].fvu if d in acc else float("nan") for d in DIRECTIONS}


def recovered(metric_with: float, metric_clean: float, metric_ablated: float) -> float:
    """Share of a metric recovered by a spliced reconstruction (1 = clean, 0 = mean-ablated)::

    (with - ablated) / (clean - ablated), NaN when clean equals ablated.
    """
    gap = metric_clean - metric_ablated
    return (metric_with - metric_ablated) / gap if gap != 0 else float("nan")
