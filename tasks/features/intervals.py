"""95% bootstrap intervals of the feature comparison: shares over latents, FVUs over examples.

Every share of the comparison is a mean of a per-latent indicator over a dictionary's live
latents: matched (one-to-one partner at cosine ≥ threshold), task-specific (AUROC beyond
the thresholds), in a crosscoder group. Its interval resamples those latents with
replacement: how much the share would move with another draw of latents from the same
dictionary. It does not cover a retrained dictionary (that is what the control SAE
measures) nor other probe examples (the AUROCs are held fixed).

The transfer FVUs are sums over held-out tokens; their interval (:class:`ExampleFVU`)
resamples held-out probe examples instead: how much the FVU would move with other examples.
"""

from __future__ import annotations

import numpy as np
import torch

SHARE_RESAMPLES = 1000
SHARE_SEED = 0
CI_LEVEL = 0.95


def share_interval(
    indicator: np.ndarray, resamples: int = SHARE_RESAMPLES, seed: int = SHARE_SEED
) -> list[float]:
    """[low, high] percentile interval (95%) of the mean of boolean ``indicator`` [n]
    over ``resamples`` seeded resamples of its entries; [NaN, NaN] when empty."""
    indicator = np.asarray(indicator, dtype=bool)
    if indicator.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    # A resample's share is Binomial(n, p̂) / n: the count of ones among n draws.
    shares = rng.binomial(indicator.size, indicator.mean(), size=resamples) / indicator.size
    tail = 100 * (1 - CI_LEVEL) / 2
    low, high = np.percentile(shares, [tail, 100 - tail])
    return [float(low), float(high)]


class ExampleFVU:
    """FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² from per-example sums, and its bootstrap interval
    over examples.

    Each probe example e keeps its token count n_e, squared error sse_e, Σ‖x‖² and Σx [d]
    (float64). A resample draws the examples that have tokens with replacement (counts
    w_e) and recomputes the FVU exactly from Σ_e w_e·(sums of e): the FVU of the resampled
    tokens, each example's tokens together. Examples, not tokens, are the unit: the tokens
    of one sentence share its context and are not independent draws, and the similarity
    intervals resample examples too.
    """

    def __init__(self, n_examples: int, width: int, device: torch.device | str = "cpu") -> None:
        self.count = torch.zeros(n_examples, dtype=torch.float64, device=device)
        self.sse = torch.zeros(n_examples, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(n_examples, dtype=torch.float64, device=device)
        self.total = torch.zeros(n_examples, width, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, example: torch.Tensor) -> None:
        """Add tokens ``x`` and reconstructions ``x_hat`` [n, d] of examples ``example`` [n]."""
        x64, err = x.double(), (x - x_hat).double()
        self.count.index_add_(0, example, torch.ones_like(x64[:, 0]))
        self.sse.index_add_(0, example, err.pow(2).sum(dim=1))
        self.sum_sq.index_add_(0, example, x64.pow(2).sum(dim=1))
        self.total.index_add_(0, example, x64)

    def _fvu(self, weights: np.ndarray) -> np.ndarray:
        """FVU (R,) of the example weightings ``weights`` (R, examples)."""
        w = np.asarray(weights, dtype=np.float64)
        total = w @ self.total.cpu().numpy()
        n = w @ self.count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = w @ self.sum_sq.cpu().numpy() - np.einsum("rd,rd->r", total, total) / n
            return np.where(variance > 0, (w @ self.sse.cpu().numpy()) / variance, np.nan)

    @property
    def fvu(self) -> float:
        """The FVU of every token added (NaN without tokens or variance)."""
        if not float(self.count.sum()):
            return float("nan")
        return float(self._fvu(np.ones((1, self.count.numel())))[0])

    def interval(self, resamples: int = SHARE_RESAMPLES, seed: int = SHARE_SEED) -> list[float]:
        """[low, high] percentile interval (95%) of the FVU over ``resamples`` seeded
        bootstrap resamples of the examples with tokens; [NaN, NaN] without any."""
        present = np.flatnonzero(self.count.cpu().numpy() > 0)
        if present.size == 0:
            return [float("nan"), float("nan")]
        counts = example_resamples(present.size, resamples, seed)
        weights = np.zeros((resamples, self.count.numel()))
        weights[:, present] = counts
        tail = 100 * (1 - CI_LEVEL) / 2
        values = self._fvu(weights)
        if np.isnan(values).all():
            return [float("nan"), float("nan")]
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        return [float(low), float(high)]


def example_resamples(n: int, resamples: int = SHARE_RESAMPLES, seed: int = SHARE_SEED):
    """Seeded bootstrap counts (resamples, n): each row a draw of n of the n items with
    replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
