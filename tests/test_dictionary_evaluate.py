"""SAE metrics against reference formulas, and accuracy/loss recovered."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from layerdrift.tasks.dictionary import (
    DENSITY_EDGES,
    DictionarySpec,
    build,
    density_histogram,
    reconstruction_metrics,
    recovered_metrics,
)

TEXTS = ["good movie", "the plot was bad", "a lovely film really", "boring end", "great story"]
LABELS = np.array([1, 0, 1, 0, 1])


def _identity_sae(d: int):
    """A ReLU SAE with relu(x) − relu(−x) = x: a perfect reconstruction."""
    model = build(DictionarySpec(d_model=d, d_sae=2 * d, architecture="relu"))
    eye = torch.eye(d)
    with torch.no_grad():
        model.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        model.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        model.b_enc.zero_()
        model.b_dec.zero_()
    return model


def test_reconstruction_metrics_match_reference(rng):
    model = build(DictionarySpec(d_model=8, d_sae=24, k=3), torch.Generator().manual_seed(0))
    x = torch.from_numpy(rng.normal(size=(300, 8)).astype(np.float32)) + 1.0
    model.init_from_sample(x)
    metrics, frequency = reconstruction_metrics(model, x, batch_size=64)
    xn = x.double().numpy()
    with torch.no_grad():
        f = model.encode(x).double().numpy()
        r = model(x).double().numpy()
    err = xn - r
    assert metrics["mse"] == pytest.approx(np.mean(err**2), rel=1e-5)
    fvu = np.sum(err**2) / np.sum((xn - xn.mean(0)) ** 2)
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-5)
    ev = 1 - np.var(err, axis=0).sum() / np.var(xn, axis=0).sum()
    assert metrics["explained_variance"] == pytest.approx(ev, rel=1e-5)
    assert metrics["l0"] == pytest.approx(np.mean((f > 0).sum(1)))
    np.testing.assert_allclose(frequency, (f > 0).mean(0))
    assert metrics["dead_fraction"] == pytest.approx(np.mean((f > 0).sum(0) == 0))


def test_density_histogram_bins():
    frequency = np.array([0.0, 1e-9, 1e-3, 0.7, 1.0])
    counts = density_histogram(frequency)
    assert counts.sum() == 5 and counts[0] == 2  # never-firing land in the first bin
    assert counts[np.searchsorted(DENSITY_EDGES, -3.0, side="right") - 1] == 1
    assert counts[-1] == 2  # log10(0.7) and log10(1) share the top bin


def test_perfect_sae_recovers_everything_and_mean_sae_nothing(tiny_model_dir):
    mean = torch.full((32,), 0.1)
    perfect = recovered_metrics(tiny_model_dir, 1, _identity_sae(32), mean, TEXTS, LABELS)
    assert perfect["loss_sae"] == pytest.approx(perfect["loss_clean"], abs=1e-5)
    assert perfect["loss_mean"] != pytest.approx(perfect["loss_clean"], abs=1e-4)
    assert perfect["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(perfect["accuracy_recovered"]) or perfect["accuracy_recovered"] == 1.0

    constant = _identity_sae(32)
    with torch.no_grad():
        constant.W_dec.zero_()
        constant.b_dec.copy_(mean)  # reconstructs every token as the mean
    ablated = recovered_metrics(tiny_model_dir, 1, constant, mean, TEXTS, LABELS)
    assert ablated["loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert ablated["loss_mean"] == pytest.approx(perfect["loss_mean"], abs=1e-6)


def test_labels_beyond_the_head_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="do not match"):
        recovered_metrics(tiny_model_dir, 0, _identity_sae(32), torch.zeros(32), TEXTS[:1], [5])
