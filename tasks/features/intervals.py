"""95% bootstrap intervals of the feature comparison's shares, resampling latents.

Every share of the comparison is a mean of a per-latent indicator over a dictionary's live
latents: matched (one-to-one partner at cosine ≥ threshold), task-specific (AUROC beyond
the thresholds), in a crosscoder group. Its interval resamples those latents with
replacement: how much the share would move with another draw of latents from the same
dictionary. It does not cover a retrained dictionary (that is what the control SAE
measures) nor other probe examples (the AUROCs are held fixed).
"""

from __future__ import annotations

import numpy as np

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
