"""Decoder matching between two dictionaries: best cosines and a one-to-one (Hungarian) match.

A latent's decoder row is the direction it writes into the residual stream. Two SAEs
trained on the base and the fine-tuned model share a feature when some pair of their
decoder rows points the same way (cosine >= a threshold, 0.7 by default).

The two SAEs of a layer share their initialisation and token order
(:mod:`tasks.dictionary.lifecycle`), so the matched fraction measures how far the fine-tuned
activations pulled the dictionary away from the base one: 1 on identical activations. It is
only meaningful once the decoders have moved far from that initialisation; at too few steps
both SAEs still sit on it and match at every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class MatchResult:
    """Matching of the latents of dictionary B (fine-tuned) against dictionary A (base).

    ``best_cosine[j]`` is B-latent j's highest cosine with any A-latent and ``best_index[j]``
    that latent; ``hungarian_cosine[j]`` / ``hungarian_index[j]`` are its partner in the
    one-to-one matching that maximises the summed cosine (-1 where B has more latents than A
    and j is left unmatched, with cosine NaN).
    """

    best_cosine: np.ndarray  # [d_b] float
    best_index: np.ndarray  # [d_b] int
    hungarian_cosine: np.ndarray  # [d_b] float
    hungarian_index: np.ndarray  # [d_b] int

    def matched(self, threshold: float, one_to_one: bool = True) -> np.ndarray:
        """[d_b] bool: B's latents whose (one-to-one, else best) match has cosine >= threshold."""
        cos = self.hungarian_cosine if one_to_one else self.best_cosine
        return np.nan_to_num(cos, nan=-np.inf) >= threshold

    def matched_fraction(self, threshold: float, one_to_one: bool = True) -> float:
        """Share of B's latents whose (one-to-one, else best) match has cosine >= threshold."""
        return float(np.mean(self.matched(threshold, one_to_one)))


def unit_rows(W_dec: np.ndarray) -> np.ndarray:
    """Rows of ``W_dec`` [d_sae, d_in] scaled to unit norm (all-zero rows stay zero)."""
    W = np.asarray(W_dec, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"a decoder must be 2-D [d_sae, d_in], got shape {W.shape}")
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    return W / np.where(norms > 0, norms, 1.0)


def decoder_cosines(W_dec_a: np.ndarray, W_dec_b: np.ndarray) -> np.ndarray:
    """Cosine between every decoder row of A [d_a, d_in] and of B [d_b, d_in]: [d_a, d_b]."""
    if W_dec_a.shape[1] != W_dec_b.shape[1]:
        raise ValueError(
            f"decoders write into different spaces: d_in {W_dec_a.shape[1]} vs "
            f"{W_dec_b.shape[1]}; compare SAEs of the same layer and model family"
        )
    return unit_rows(W_dec_a) @ unit_rows(W_dec_b).T


def match_decoders(W_dec_a: np.ndarray, W_dec_b: np.ndarray) -> MatchResult:
    """Match B's latents to A's by decoder cosine, best-of and one-to-one.

    ``W_dec_a`` is [d_a, d_in] (base SAE), ``W_dec_b`` [d_b, d_in] (fine-tuned SAE). The
    one-to-one matching is the assignment problem on the cosine matrix, solved exactly with
    :func:`scipy.optimize.linear_sum_assignment` (maximise summed cosine).
    """
    cos = decoder_cosines(W_dec_a, W_dec_b)  # [d_a, d_b]
    best_index = np.argmax(cos, axis=0)
    best_cosine = cos[best_index, np.arange(cos.shape[1])]
    rows, cols = linear_sum_assignment(cos, maximize=True)
    hungarian_index = np.full(cos.shape[1], -1, dtype=np.int64)
    hungarian_cosine = np.full(cos.shape[1], np.nan)
    hungarian_index[cols] = rows
    hungarian_cosine[cols] = cos[rows, cols]
    return MatchResult(best_cosine, best_index, hungarian_cosine, hungarian_index)


def histogram(values: np.ndarray, bins: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts of finite ``values`` in ``bins`` equal bins over [lo, hi]: (counts [bins], edges)."""
    values = np.asarray(values, dtype=np.float64)
    values = np.clip(values[np.isfinite(values)], lo, hi)
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return counts.astype(np.int64), edges
