"""Latent Scaling of crosscoder exclusives against a per-latent least-squares reference."""

from __future__ import annotations

import numpy as np
import torch

from layerdrift.config import FeaturesConfig
from layerdrift.tasks.dictionary.model import DictionarySpec, build
from layerdrift.tasks.features.latent_scaling import scaling_ratios, surviving_counts

D, D_SAE, N = 8, 16, 600


def _crosscoder(seed: int = 0):
    model = build(
        DictionarySpec(d_model=D, d_sae=D_SAE, architecture="relu", n_models=2),
        torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        model.scale.copy_(torch.tensor([0.5, 2.0]))  # the two models in other units
    return model


def _lstsq_beta(f: np.ndarray, d: np.ndarray, y: np.ndarray) -> float:
    """argmin_β Σ_i ‖β f_i d − y_i‖², solved by numpy's least squares on the stacked system."""
    design = (f[:, None] * d[None, :]).reshape(-1, 1)
    return float(np.linalg.lstsq(design, y.reshape(-1), rcond=None)[0][0])


def test_ratios_equal_a_least_squares_fit_per_latent():
    model = _crosscoder()
    x = torch.randn(N, 2, D, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    codes = model.encode(x).detach().numpy().astype(np.float64)
    x_hat = model.decode(model.encode(x)).detach().numpy().astype(np.float64)
    fired = np.flatnonzero((codes > 0).sum(axis=0) > 5)[:4]
    owners = np.arange(len(fired)) % 2
    nu_eps, nu_recon = scaling_ratios(model, x, fired, owners)
    W = model.decoder_directions().numpy().astype(np.float64)
    scale = model.scale.numpy().astype(np.float64)
    xs = x.numpy().astype(np.float64)
    for i, (j, own) in enumerate(zip(fired, owners, strict=True)):
        other = 1 - own
        f = codes[:, j]
        unit = W[j] / scale[:, None]  # raw activation per unit code, per model
        direction = unit[own]

        def fit(target: np.ndarray, f=f, direction=direction) -> float:
            return _lstsq_beta(f, direction, target)

        contribution = f[:, None, None] * unit[None]  # [n, 2, d]
        error = xs - x_hat + contribution
        expected_eps = fit(error[:, other]) / fit(error[:, own])
        expected_recon = fit(x_hat[:, other] - contribution[:, other]) / fit(x_hat[:, own])
        np.testing.assert_allclose(nu_eps[i], expected_eps, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(nu_recon[i], expected_recon, rtol=1e-6, atol=1e-9)


def test_a_shrunk_latent_fails_and_a_true_exclusive_survives():
    """Latent 0 is fine-tuned-only with its direction also in base (Complete Shrinkage);
    latent 1 is fine-tuned-only and base never holds its direction."""
    rng = np.random.default_rng(2)
    model = build(
        DictionarySpec(d_model=D, d_sae=2, architecture="relu", n_models=2),
        torch.Generator().manual_seed(0),
    )
    e = np.eye(D)
    with torch.no_grad():
        model.W_dec.zero_()
        model.W_dec[0, D:] = torch.tensor(e[0])  # fine-tuned decoder only
        model.W_dec[1, D:] = torch.tensor(e[1])
        model.b_dec.zero_()
        model.b_enc.zero_()
        model.W_enc.zero_()
        model.W_enc[D + 0, 0] = 1.0  # each latent reads its axis of the fine-tuned model
        model.W_enc[D + 1, 1] = 1.0
    f = rng.exponential(1.0, size=(N, 2))
    x = np.zeros((N, 2, D))
    x[:, 1, 0], x[:, 1, 1] = f[:, 0], f[:, 1]
    x[:, 0, 0] = 0.9 * f[:, 0]  # base still writes latent 0's direction, undecoded
    x[:, :, 2:] = 0.01 * rng.standard_normal((N, 2, D - 2))
    x = torch.tensor(x, dtype=torch.float32)
    nu_eps, nu_recon = scaling_ratios(model, x, np.array([0, 1]), np.array([1, 1]))
    assert abs(nu_eps[0] - 0.9) < 0.05 and abs(nu_eps[1]) < 0.05
    assert np.abs(nu_recon).max() < 0.05  # no other latent rebuilds either direction
    fcfg = FeaturesConfig(base_only_below=0.1, finetuned_only_above=0.9)
    assert surviving_counts(model, x, fcfg) == {"base_only": 0, "finetuned_only": 1}
