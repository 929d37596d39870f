"""Pooling against a direct per-example computation; probes find planted signal, not noise."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from factories import make_activation_store

from layerdrift.tasks.similarity.probes import (
    majority_rate,
    pooled_representations,
    probe_accuracy,
    probe_results,
    probe_table,
    shuffled_labels,
)


def _store(tmp_path, rng, token_chunk, signal_layer=None, n_examples=60, hidden=10):
    counts = rng.integers(2, 9, n_examples).tolist()
    labels = (np.arange(n_examples) % 2).tolist()
    acts = rng.standard_normal((2, 3, sum(counts), hidden))
    example = np.repeat(np.arange(n_examples), counts)
    if signal_layer is not None:  # the final checkpoint's layer carries the label in dim 0
        acts[1, signal_layer, :, 0] += 3.0 * (2 * np.asarray(labels)[example] - 1)
    path = str(tmp_path / f"s{token_chunk}.zarr")
    make_activation_store(path, acts.astype(np.float16), counts, labels, token_chunk=token_chunk)
    return xr.open_zarr(path), acts.astype(np.float16).astype(np.float64), example


@pytest.mark.parametrize("token_chunk", [5, 64, 1000])
def test_pooling_matches_direct(tmp_path, rng, token_chunk):
    ds, acts, example = _store(tmp_path, rng, token_chunk)
    keep = ~ds["is_special"].values
    for mask in (None, keep):
        mean, cls = pooled_representations(ds, mask, scheduler="synchronous")
        use = np.ones(example.size, bool) if mask is None else mask
        for e in rng.choice(example.max() + 1, 10, replace=False):
            tokens = (example == e) & use
            want = acts[:, :, tokens].mean(axis=2)
            np.testing.assert_allclose(mean[:, :, e], want, rtol=1e-5, atol=1e-6)
            first = int(ds["token_start"].values[e])
            np.testing.assert_allclose(cls[:, :, e], acts[:, :, first], rtol=1e-6)


def test_probe_finds_planted_layer(tmp_path, rng):
    ds, _, _ = _store(tmp_path, rng, 32, signal_layer=2)
    table = probe_table(ds, folds=3, seed=0)
    assert table.dims == ("checkpoint", "layer", "pooling")
    assert float(table.sel(checkpoint="final", layer=2, pooling="mean")) >= 0.9
    assert float(table.sel(checkpoint="final", layer=2, pooling="cls")) >= 0.9
    assert float(table.sel(checkpoint="base", layer=2, pooling="mean")) <= 0.75
    # Seeded folds: the same table twice.
    np.testing.assert_array_equal(table.values, probe_table(ds, folds=3, seed=0).values)


def test_probe_refuses_too_few_examples_per_fold():
    features = np.random.default_rng(0).standard_normal((6, 3))
    assert np.isnan(probe_accuracy(features, np.array([0, 0, 0, 0, 1, 1]), folds=3, seed=0))


def test_control_task_scores_chance_where_the_probe_reads_the_label(tmp_path, rng):
    ds, _, _ = _store(tmp_path, rng, 32, signal_layer=2)
    out = probe_results(ds, folds=3, seed=0)
    accuracy, control = out["probe_accuracy"], out["probe_control_accuracy"]
    assert control.dims == accuracy.dims == ("checkpoint", "layer", "pooling")
    assert float(accuracy.sel(checkpoint="final", layer=2, pooling="mean")) >= 0.9
    # Shuffled labels: the planted direction no longer predicts them.
    assert float(control.sel(checkpoint="final", layer=2, pooling="mean")) <= 0.7
    assert float(out["majority_rate"]) == 0.5  # alternating labels
    np.testing.assert_array_equal(accuracy, probe_table(ds, folds=3, seed=0))


def test_shuffled_labels_keep_counts_and_are_seeded():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    control = shuffled_labels(labels, seed=1)
    np.testing.assert_array_equal(np.sort(control), labels)
    np.testing.assert_array_equal(control, shuffled_labels(labels, seed=1))
    assert not np.array_equal(control, labels)
    assert majority_rate(labels) == 0.5
