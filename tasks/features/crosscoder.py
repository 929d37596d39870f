"""Reading a crosscoder of base and fine-tuned: which model each latent writes into.

The crosscoder itself is a :mod:`tasks.dictionary` dictionary over both models' activations
(Lindsey et al. 2024, "Sparse Crosscoders"; Minder et al. 2025 for base vs fine-tuned). A
latent whose fine-tuned decoder row is (nearly) zero exists only in the base model, and the
reverse; the relative decoder norm

    r = ‖d_ft‖ / (‖d_base‖ + ‖d_ft‖)

(decoder rows in normalised units) sorts latents into base-only (r small), shared and
fine-tuned-only (r large).
"""

from __future__ import annotations

import numpy as np

GROUPS = ("base_only", "shared", "finetuned_only")


def relative_norms(decoder_norms: np.ndarray) -> np.ndarray:
    """``‖d_ft‖ / (‖d_base‖ + ‖d_ft‖)`` from norms [d_sae, 2]: [d_sae] (0.5 if both 0)."""
    norms = np.asarray(decoder_norms, dtype=np.float64)
    total = norms.sum(axis=1)
    return np.where(total > 0, norms[:, 1] / np.where(total > 0, total, 1.0), 0.5)


def classify_latents(
    rel_norm: np.ndarray, base_only_below: float, ft_only_above: float
) -> np.ndarray:
    """Group index per latent (0 base-only, 1 shared, 2 fine-tuned-only): [d_sae] int."""
    rel_norm = np.asarray(rel_norm)
    groups = np.ones(rel_norm.shape, dtype=np.int64)
    groups[rel_norm < base_only_below] = 0
    groups[rel_norm > ft_only_above] = 2
    return groups


def relative_norm_deviation(rel_norm: np.ndarray) -> float:
    """``2 · mean |r - 0.5|`` of relative decoder norms [n]: 0 when every latent writes
    equally into both models, 1 when every latent is exclusive to one (NaN for none).

    A threshold-free summary of how far a crosscoder's latents lean to one model, to read
    beside the group counts (a TopK crosscoder rarely drives a decoder all the way to 0).
    """
    rel_norm = np.asarray(rel_norm, dtype=np.float64)
    return float(2 * np.abs(rel_norm - 0.5).mean()) if rel_norm.size else float("nan")
