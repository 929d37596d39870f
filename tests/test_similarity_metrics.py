"""Each similarity metric from moments against an independent textbook / O(n²) formula."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group

from layerdrift.tasks.similarity.metrics import FUNCTIONS, METRICS, all_metrics
from layerdrift.tasks.similarity.moments import moments_from_arrays, self_as_cross

SHAPES = [(60, 8, 8), (45, 6, 11), (12, 20, 16), (150, 24, 9)]  # (n, d1, d2); n < d included


# Independent references: explicit Gram matrices, centring matrices, CCA through QR + SVD.


def ref_cosine(x, y):
    if x.shape[1] != y.shape[1]:
        return np.nan  # per-token cosine needs equal widths
    return np.mean(np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))


def _hsic_biased(k, g):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ g @ h)


def ref_linear_cka(x, y):
    k, g = x @ x.T, y @ y.T
    return _hsic_biased(k, g) / np.sqrt(_hsic_biased(k, k) * _hsic_biased(g, g))


def _hsic_unbiased(k, g):
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), g - np.diag(np.diag(g))
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    )
    return value / (n * (n - 3))


def ref_debiased_cka(x, y):
    xc, yc = x - x.mean(0), y - y.mean(0)  # Kornblith et al. centre features first
    k, g = xc @ xc.T, yc @ yc.T
    return _hsic_unbiased(k, g) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(g, g))


def _orthobasis(xc, keep=None, tol=1e-10):
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    rank = int(np.sum(s > np.sqrt(tol) * s[0]))
    r = rank if keep is None else min(keep, rank)
    return u[:, :r], s[:r]


def _cca(qx, qy):
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    k = min(qx.shape[1], qy.shape[1])
    return np.clip(rho[:k], 0, 1), qx @ u[:, :k]


def ref_svcca(x, y, fraction=0.99):
    xc, yc = x - x.mean(0), y - y.mean(0)

    def top(a):
        s = np.linalg.svd(a, compute_uv=False)
        share = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.argmax(share >= fraction)) + 1
        _, _, vt = np.linalg.svd(a, full_matrices=False)
        return a @ vt[:k].T  # data projected on its top-k principal directions

    qx, _ = np.linalg.qr(top(xc))
    qy, _ = np.linalg.qr(top(yc))
    return _cca(qx, qy)[0].mean()


def ref_pwcca(x, y):
    xc, yc = x - x.mean(0), y - y.mean(0)
    qx, _ = _orthobasis(xc)
    qy, _ = _orthobasis(yc)
    rho, h = _cca(qx, qy)
    alpha = np.abs(h.T @ xc).sum(axis=1)
    return np.sum(alpha * rho) / alpha.sum()


def ref_procrustes(x, y):
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    d = max(xc.shape[1], yc.shape[1])
    xp = np.pad(xc, ((0, 0), (0, d - xc.shape[1])))
    yp = np.pad(yc, ((0, 0), (0, d - yc.shape[1])))
    r, _ = orthogonal_procrustes(yp, xp)
    return np.sum((xp - yp @ r) ** 2)


def ref_norm_ratio(x, y):
    return np.linalg.norm(y, axis=1).mean() / np.linalg.norm(x, axis=1).mean() - 1


REFERENCES = {
    "cosine": ref_cosine,
    "linear_cka": ref_linear_cka,
    "debiased_cka": ref_debiased_cka,
    "svcca": ref_svcca,
    "pwcca": ref_pwcca,
    "procrustes": ref_procrustes,
    "norm_ratio": ref_norm_ratio,
}


def _pair(rng, n, d1, d2):
    """Correlated X, Y with non-zero means and unequal scales per feature."""
    z = rng.standard_normal((n, min(d1, d2)))
    x = rng.standard_normal((n, d1)) * rng.uniform(0.5, 3, d1) + rng.normal(0, 4, d1)
    y = rng.standard_normal((n, d2)) + rng.normal(0, 2, d2)
    x[:, : z.shape[1]] += 2 * z
    y[:, : z.shape[1]] += z @ rng.standard_normal((z.shape[1], z.shape[1]))
    return x, y


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"n{s[0]}-d{s[1]}-d{s[2]}")
@pytest.mark.parametrize("metric", METRICS)
def test_metric_matches_reference(rng, shape, metric):
    x, y = _pair(rng, *shape)
    # A shift far from the data mean: metrics must not depend on it.
    sx, sy, xy = moments_from_arrays(x, y, shift_x=x[0] + 1.0, shift_y=-y[1])
    got = FUNCTIONS[metric](sx, sy, xy)
    want = REFERENCES[metric](x, y)
    if metric == "cosine" and shape[1] != shape[2]:
        assert np.isnan(want) and np.isnan(got)
        return
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_unbiased_hsic_is_not_biased_hsic(rng):
    """Guard: the debiased estimator differs from the biased one on small n."""
    x, y = _pair(rng, 20, 5, 5)
    sx, sy, xy = moments_from_arrays(x, y)
    assert abs(FUNCTIONS["debiased_cka"](sx, sy, xy) - ref_linear_cka(x, y)) > 1e-3


def test_cka_invariant_to_rotation_and_isotropic_scaling(rng):
    x, y = _pair(rng, 80, 10, 10)
    q = ortho_group.rvs(10, random_state=1)
    base = moments_from_arrays(x, y)
    moved = moments_from_arrays(x, 3.7 * (y @ q))
    for name in ("linear_cka", "debiased_cka"):
        assert FUNCTIONS[name](*moved) == pytest.approx(FUNCTIONS[name](*base), rel=1e-10)


def test_procrustes_zero_for_rotated_copy(rng):
    x = rng.standard_normal((50, 12)) + 5
    q = ortho_group.rvs(12, random_state=2)
    assert FUNCTIONS["procrustes"](*moments_from_arrays(x, x @ q)) == pytest.approx(0, abs=1e-10)


def test_identical_inputs(rng):
    x = rng.standard_normal((40, 7)) + 1
    sx, sy, xy = moments_from_arrays(x, x.copy())
    values = dict(zip(METRICS, all_metrics(sx, sy, xy), strict=True))
    for name in ("cosine", "linear_cka", "debiased_cka"):
        assert abs(values[name] - 1) < 1e-12, name
    assert values["svcca"] == pytest.approx(1, abs=1e-9)
    assert values["pwcca"] == pytest.approx(1, abs=1e-9)
    assert values["norm_ratio"] == pytest.approx(0, abs=1e-12)
    # The diagonal of layer similarity uses the self moments as cross moments.
    assert all_metrics(sx, sx, self_as_cross(sx)) == pytest.approx(all_metrics(sx, sy, xy))


def test_pwcca_is_asymmetric_and_swap_is_consistent(rng):
    x, y = _pair(rng, 70, 9, 5)
    sx, sy, xy = moments_from_arrays(x, y)
    assert FUNCTIONS["pwcca"](sy, sx, xy.swapped()) == pytest.approx(ref_pwcca(y, x), rel=1e-6)
