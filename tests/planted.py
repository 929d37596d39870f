"""Planted-feature activations for tests, where the right answer is known.

- :func:`planted_activations`: one model, a random unit dictionary with sparse non-negative
  codes, ``x = codes @ dictionary + offset`` with ``n_active`` features per token,
  magnitudes uniform in [0.5, 2) (does an SAE find the planted directions?);
- :func:`planted_pair`: two models built from shared, base-only and fine-tuned-only
  directions (does a crosscoder sort them?).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class PlantedPair:
    """Paired activations of two "models" built from planted dictionaries.

    ``x`` is [n_tokens, 2, d_in] (model 0 = base, 1 = fine-tuned). ``D`` is [n_features, 2,
    d_in]: feature i writes ``D[i, m]`` into model m (zero where it is absent). ``group`` is
    [n_features] with 0 base-only, 1 shared, 2 fine-tuned-only. ``codes`` [n_tokens,
    n_features] are the planted sparse activations.
    """

    x: np.ndarray
    D: np.ndarray
    group: np.ndarray
    codes: np.ndarray


def planted_pair(
    rng: np.random.Generator,
    n_tokens: int = 20_000,
    d_in: int = 32,
    n_shared: int = 16,
    n_base_only: int = 8,
    n_ft_only: int = 8,
    p_active: float = 0.08,
    same_shared: bool = True,
    noise: float = 0.0,
) -> PlantedPair:
    """Draw a :class:`PlantedPair`.

    Each feature fires independently with probability ``p_active`` and magnitude
    Uniform(0.5, 2). Shared features write the same unit direction into both models when
    ``same_shared`` (else an independent direction per model). ``noise`` adds Gaussian noise
    of that standard deviation per coordinate.
    """
    n_feat = n_shared + n_base_only + n_ft_only
    group = np.array([0] * n_base_only + [1] * n_shared + [2] * n_ft_only)
    dirs = rng.standard_normal((n_feat, 2, d_in))
    if same_shared:
        dirs[group == 1, 1] = dirs[group == 1, 0]
    dirs /= np.linalg.norm(dirs, axis=2, keepdims=True)
    dirs[group == 0, 1] = 0.0
    dirs[group == 2, 0] = 0.0
    active = rng.random((n_tokens, n_feat)) < p_active
    codes = active * rng.uniform(0.5, 2.0, (n_tokens, n_feat))
    x = np.einsum("tf,fmi->tmi", codes, dirs)
    if noise:
        x = x + noise * rng.standard_normal(x.shape)
    return PlantedPair(x.astype(np.float32), dirs, group, codes.astype(np.float32))
