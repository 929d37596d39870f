"""Planted-feature activations: a random unit dictionary with sparse non-negative codes.

Used by the tests (does an SAE find the planted directions?) and the benchmark (the same
data for every trainer). ``x = codes @ dictionary + offset`` with ``n_active`` features per
token, magnitudes uniform in [0.5, 2).
"""

from __future__ import annotations

import numpy as np


def planted_dictionary(n_features: int, d_in: int, rng: np.random.Generator) -> np.ndarray:
    """Random unit-norm directions: [n_features, d_in] float64."""
    directions = rng.normal(size=(n_features, d_in))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def planted_activations(
    n_tokens: int,
    dictionary: np.ndarray,
    n_active: int,
    rng: np.random.Generator,
    offset: float = 0.3,
) -> np.ndarray:
    """Tokens [n_tokens, d_in] float32, each a sum of ``n_active`` planted directions.

    ``dictionary`` is [n_features, d_in]; the active features of each token are drawn
    uniformly without replacement.
    """
    n_features = dictionary.shape[0]
    if not 0 < n_active <= n_features:
        raise ValueError(f"n_active={n_active} must lie in 1..{n_features}")
    active = np.argsort(rng.random((n_tokens, n_features)), axis=1)[:, :n_active]
    magnitudes = rng.uniform(0.5, 2.0, size=(n_tokens, n_active))
    x = np.einsum("nk,nkd->nd", magnitudes, dictionary[active]) + offset
    return x.astype(np.float32)


def best_cosines(planted: np.ndarray, decoder: np.ndarray) -> np.ndarray:
    """For each planted direction [n, d], its best cosine with any decoder row [m, d]: [n]."""
    a = planted / np.linalg.norm(planted, axis=1, keepdims=True)
    b = decoder / np.maximum(np.linalg.norm(decoder, axis=1, keepdims=True), 1e-12)
    return (a @ b.T).max(axis=1)
