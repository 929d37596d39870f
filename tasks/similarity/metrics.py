"""Similarity metrics as pure functions of the moments of a pair (X, Y).

X is the reference (``base``, the ``previous`` checkpoint, or ``layer``), Y the compared
representation. With ``n`` tokens, centred covariances are ``Cxy = (XᵀY − ΣxΣyᵀ/n) / n``.

- ``cosine``: mean over tokens of cos(x_i, y_i) on the raw vectors (the paper's metric).
- ``linear_cka``: ||Cxy||²_F / (||Cxx||_F ||Cyy||_F), i.e. HSIC with centred linear Grams
  (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited").
- ``debiased_cka``: CKA with the unbiased HSIC estimator of Song et al. 2012 ("Feature
  Selection via Dependence Maximization", eq. 5) on linear Grams, as in Kornblith et al.
  2019; expressed in feature space (see :func:`unbiased_hsic`).
- ``svcca``: keep the top principal directions of each side explaining 99% of its variance
  (eigenvalues of Cxx), then the mean canonical correlation (Raghu et al. 2017).
- ``pwcca``: canonical correlations weighted by how much of X each canonical variate
  accounts for, α_i = Σ_j |⟨h_i, x_j⟩| over the centred neurons x_j of X (Morcos et al.
  2018, "Insights on representational similarity ... with canonical correlation").
- ``procrustes``: the orthogonal Procrustes *distance* on centred data scaled to unit
  Frobenius norm, min_R ||X̂ − ŶR||²_F = 2 − 2·||X̂ᵀŶ||_* (Ding et al. 2021, "Grounding
  Representation Similarity with Statistical Testing"; Williams et al. 2021). 0 means equal
  up to rotation; it is a distance, not a similarity.
- ``norm_ratio``: mean ||y_i|| / mean ||x_i|| − 1 (relative change of the mean norm).
"""

from __future__ import annotations

import numpy as np

from layerdrift.tasks.similarity.moments import CrossMoments, SelfMoments

METRICS = (
    "cosine",
    "linear_cka",
    "debiased_cka",
    "svcca",
    "pwcca",
    "procrustes",
    "norm_ratio",
)
SVCCA_VARIANCE = 0.99
RANK_TOL = 1e-10  # eigenvalues below RANK_TOL · largest count as zero


def covariance(sx: SelfMoments) -> np.ndarray:
    """Centred covariance (d, d) of one representation."""
    return sx.covariance


def cross_covariance(sx: SelfMoments, sy: SelfMoments, xy: CrossMoments) -> np.ndarray:
    """Centred cross-covariance (d1, d2) of a pair."""
    return (xy.cross - np.outer(sx.total, sy.total) / xy.n) / xy.n


def cosine(sx: SelfMoments, sy: SelfMoments, xy: CrossMoments) -> float:
    """Mean per-token cosine similarity."""
    return xy.cos_sum / xy.n


def linear_cka(sx: SelfMoments, sy: SelfMoments, xy: CrossMoments) -> float:
    """Linear CKA from centred (cross-)covariances."""
    cxy = cross_covariance(sx, sy, xy)
    return float(np.sum(cxy**2) / (np.linalg.norm(covariance(sx)) * np.linalg.norm(covariance(sy))))


def unbiased_hsic(
    n: float,
    cross: np.ndarray,
    total_x: np.ndarray,
    total_y: np.ndarray,
    sq_x: float,
    sq_y: float,
    sq_product: float,
    y_weighted: np.ndarray,
    x_weighted: np.ndarray,
) -> float:
    """Song et al.'s unbiased HSIC of linear Grams K = XXᵀ, L = YYᵀ, from feature moments.

    With K̃, L̃ the Grams with zeroed diagonals, d_i = K_ii, e_i = L_ii:
    HSIC = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)), where
    tr(K̃L̃) = ||XᵀY||²_F − Σd_i e_i, 1ᵀK̃1 = ||Σx||² − Σd_i, and
    1ᵀK̃L̃1 = Σ_i (x_iᵀΣx − d_i)(y_iᵀΣy − e_i)
            = ΣxᵀXᵀYΣy − (Σd_i y_i)ᵀΣy − (Σe_i x_i)ᵀΣx + Σd_i e_i.
    """
    if n < 4:
        return float("nan")
    tr_kl = np.sum(cross**2) - sq_product
    sum_k = total_x @ total_x - sq_x
    sum_l = total_y @ total_y - sq_y
    kl_1 = total_x @ cross @ total_y - y_weighted @ total_y - x_weighted @ total_x + sq_product
    value = tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * kl_1 / (n - 2)
    return float(value / (n * (n - 3)))


def _self_hsic(s: SelfMoments) -> float:
    return unbiased_hsic(
        s.n, s.gram, s.total, s.total, s.sq_norm_sum, s.sq_norm_sum, s.sq_norm_sq_sum,
        s.sq_norm_weighted, s.sq_norm_weighted,
    )  # fmt: skip


def debiased_cka(sx: SelfMoments, sy: SelfMoments, xy: CrossMoments) -> float:
    """CKA with the unbiased HSIC estimator (NaN when n < 4 or a self-HSIC is not positive)."""
    hxy = unbiased_hsic(
        xy.n, xy.cross, sx.total, sy.total, sx.sq_norm_sum, sy.sq_norm_sum,
        xy.sq_norm_product_sum, xy.y_weighted, xy.x_weighted,
    )  # fmt: skip
    hxx, hyy = _self_hsic(sx), _self_hsic(sy)
    if not (hxx > 0 and hyy > 0):
        return float("nan")
    return hxy / float(np.sqrt(hxx * hyy))


# The spectral metrics. SVCCA and PWCCA use symmetric eigendecompositions of d×d matrices
# (LAPACK syevd), about half the time of an SVD of the same size: the singular values of M are
# the square roots of the eigenvalues of MᵀM (or MMᵀ), its left singular vectors the
# eigenvectors of MMᵀ; canonical correlations that matter are far from 0, where the square
# root keeps full precision. Each representation is whitened once (its eigen-decomposition is
# cached on its moments) and SVCCA's whitened cross-covariance is the top-left block of
# PWCCA's, because both keep eigenvectors in descending order.


def _whitener(s: SelfMoments, keep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (d, r) and eigenvalues (r,) of the retained, non-null directions."""
    values, vectors = s.eigen
    rank = int(np.sum(values > RANK_TOL * max(values[0], 0.0))) if values.size else 0
    r = rank if keep is None else min(keep, rank)
    return vectors[:, :r], values[:r]


def _whitened_cross(sx: SelfMoments, sy: SelfMoments, cxy: np.ndarray) -> np.ndarray:
    """M = Λx^{-1/2} Exᵀ Cxy Ey Λy^{-1/2} (r_x, r_y) over every non-null direction."""
    ex, lx = _whitener(sx)
    ey, ly = _whitener(sy)
    return (ex / np.sqrt(lx)).T @ cxy @ (ey / np.sqrt(ly))


def singular_values(m: np.ndarray) -> np.ndarray:
    """Singular values of ``m`` (min(m.shape),), descending, from the smaller Gram matrix."""
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    values = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.clip(values, 0.0, None))


def _left_singular(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values ρ (k,) and left singular vectors U (rows, k), k = min(m.shape)."""
    k = min(m.shape)
    values, vectors = np.linalg.eigh(m @ m.T)
    rho = np.sqrt(np.clip(values[::-1][:k], 0.0, None))
    return rho, vectors[:, ::-1][:, :k]


def canonical_correlations(
    sx: SelfMoments, sy: SelfMoments, cxy: np.ndarray, keep_x: int | None = None,
    keep_y: int | None = None,
) -> np.ndarray:  # fmt: skip
    """Canonical correlations ρ (k,), k = min(r_x, r_y), within the top ``keep_x``/``keep_y``
    principal directions (all non-null ones by default); ``cxy`` is the centred
    cross-covariance (d1, d2)."""
    m = _whitened_cross(sx, sy, cxy)
    kx = m.shape[0] if keep_x is None else min(keep_x, m.shape[0])
    ky = m.shape[1] if keep_y is None else min(keep_y, m.shape[1])
    return np.clip(singular_values(m[:kx, :ky]), 0.0, 1.0)


def _variance_rank(s: SelfMoments, fraction: float) -> int:
    values = np.clip(s.eigen[0], 0.0, None)
    share = np.cumsum(values) / values.sum()
    return int(np.searchsorted(share, fraction) + 1)


def _svcca(sx: SelfMoments, sy: SelfMoments, m: np.ndarray) -> float:
    kx, ky = _variance_rank(sx, SVCCA_VARIANCE), _variance_rank(sy, SVCCA_VARIANCE)
    return float(np.clip(singular_values(m[:kx, :ky]), 0.0, 1.0).mean())


def _pwcca(sx: SelfMoments, m: np.ndarray) -> float:
    """PWCCA with X = the side whose whitened directions are the rows of ``m``.

    The unit canonical variate h_i = Xc·a_i/√n has ⟨h_i, x_j⟩ ∝ (Cxx a_i)_j, and with
    a_i = E Λ^{-1/2} u_i that is (E Λ^{1/2} u_i)_j, so α_i = ||E Λ^{1/2} u_i||_1.
    """
    rho, u = _left_singular(m)
    ex, lx = _whitener(sx)
    alpha = np.abs((ex * np.sqrt(lx)) @ u).sum(axis=0)
    return float(alpha @ np.clip(rho, 0.0, 1.0) / alpha.sum())


def svcca(sx: SelfMoments, sy: SelfMoments, xy: CrossMoments) -> float:
    """Mean canonical correlation within the 99%-variance principal subspaces."""
    return _svcca(sx, sy, _whitened_cross(sx, sy, cross_covariance(sx, sy, xy)))


def pwcca(sx: SelfMoments, sy: SelfMoments, xy: CrossMoments) -> float:
    """Projection-weighted CCA, weights from X (the reference side)."""
    return _pwcca(sx, _whitened_cross(sx, sy, cross_covariance(sx, sy, xy)))


def _procrustes(sx: SelfMoments, sy: SelfMoments, cxy: np.ndarray, exact: bool = True) -> float:
    # An SVD for the estimate, not eigenvalues of CxyᵀCxy: the distance of a nearly unchanged
    # layer is a small difference of two nearly equal terms (4e-5 at the bundled model's
    # embeddings), and square roots of eigenvalues lose the small singular values' last
    # digits (3e-10). A bootstrap resample (``exact=False``) only feeds percentiles of a
    # spread far wider than that, and the eigenvalues take 9 ms against the SVD's 13.
    nuclear = (np.linalg.svd(cxy, compute_uv=False) if exact else singular_values(cxy)).sum()
    scale = np.sqrt(np.trace(covariance(sx)) * np.trace(covariance(sy)))
    return float(2.0 - 2.0 * nuclear / scale)


def procrustes(sx: SelfMoments, sy: SelfMoments, xy: CrossMoments) -> float:
    """Orthogonal Procrustes distance 2 − 2·||X̂ᵀŶ||_* on centred, unit-Frobenius data."""
    return _procrustes(sx, sy, cross_covariance(sx, sy, xy))


def norm_ratio(sx: SelfMoments, sy: SelfMoments, xy: CrossMoments) -> float:
    """Relative change of the mean token norm from X to Y."""
    return float(sy.raw_norm_sum / sx.raw_norm_sum - 1.0)


FUNCTIONS = {
    "cosine": cosine,
    "linear_cka": linear_cka,
    "debiased_cka": debiased_cka,
    "svcca": svcca,
    "pwcca": pwcca,
    "procrustes": procrustes,
    "norm_ratio": norm_ratio,
}


def all_metrics(
    sx: SelfMoments, sy: SelfMoments, xy: CrossMoments, resample: bool = False
) -> np.ndarray:
    """Every metric of :data:`METRICS`, in that order, as float64 (len(METRICS),);
    ``resample`` for a bootstrap resample's (Procrustes from eigenvalues, see
    :func:`_procrustes`)."""
    return metrics_both_ways(sx, sy, xy, reverse=False, resample=resample)[0]


def metrics_both_ways(
    sx: SelfMoments, sy: SelfMoments, xy: CrossMoments, reverse: bool = True,
    resample: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """Every metric of (X, Y) and, with ``reverse``, of (Y, X), sharing the decompositions.

    Only PWCCA and the norm ratio depend on the order; (Y, X)'s PWCCA uses the eigenvectors
    of MᵀM instead of MMᵀ. Returns two float64 arrays (len(METRICS),), the second None
    without ``reverse``. ``resample``: a bootstrap resample's metrics (:func:`all_metrics`).
    """
    cxy = cross_covariance(sx, sy, xy)
    m = _whitened_cross(sx, sy, cxy)
    shared = {
        "cosine": cosine(sx, sy, xy),
        "linear_cka": linear_cka(sx, sy, xy),
        "debiased_cka": debiased_cka(sx, sy, xy),
        "svcca": _svcca(sx, sy, m),
        "procrustes": _procrustes(sx, sy, cxy, exact=not resample),
    }
    forward = {**shared, "pwcca": _pwcca(sx, m), "norm_ratio": norm_ratio(sx, sy, xy)}
    out = np.array([forward[name] for name in METRICS], dtype=np.float64)
    if not reverse:
        return out, None
    backward = {**shared, "pwcca": _pwcca(sy, m.T), "norm_ratio": norm_ratio(sy, sx, xy)}
    return out, np.array([backward[name] for name in METRICS], dtype=np.float64)
