"""Bootstrap intervals: equal to a slow per-resample recomputation, cover, shrink like 1/√n."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from test_moments import random_store
from test_similarity_metrics import REFERENCES

from layerdrift.config import RunConfig
from layerdrift.storage import RunDir, open_result
from layerdrift.tasks.similarity.bootstrap import (
    METRIC_RANGE,
    bootstrap_intervals,
    example_groups,
    resample_counts,
)
from layerdrift.tasks.similarity.metrics import METRICS, all_metrics
from layerdrift.tasks.similarity.moments import moments_from_arrays


def test_groups_split_selected_examples_in_order():
    example = np.repeat(np.arange(7), [2, 1, 3, 1, 2, 2, 1])
    mask = example != 3  # example 3 is not selected
    groups = example_groups(example, mask, 3)
    # Six selected examples in three groups of two, in probe order; every token follows its
    # example, unselected tokens get -1.
    want_of_example = {0: 0, 1: 0, 2: 1, 4: 1, 5: 2, 6: 2, 3: -1}
    np.testing.assert_array_equal(groups, [want_of_example[e] for e in example])
    assert example_groups(example, mask, 50).max() == 5  # never more groups than examples


def test_resamples_are_seeded_draws_of_all_groups():
    counts = resample_counts(100, 8, seed=3)
    assert counts.shape == (100, 8) and (counts.sum(axis=1) == 8).all()
    np.testing.assert_array_equal(counts, resample_counts(100, 8, seed=3))
    assert not np.array_equal(counts, resample_counts(100, 8, seed=4))


def test_stage_intervals_equal_slow_recomputation(tmp_path, rng):
    """similarity_ci from the stage = percentiles of the textbook O(n²) formulas applied to
    the resampled tokens themselves, for the same seeded resamples, shifted by their mean
    minus the formulas on all tokens, clipped to each metric's range."""
    run = RunDir(str(tmp_path / "run"))
    _, acts = random_store(run.activations(), rng, n_examples=24, token_chunk=16)
    cfg = RunConfig(
        seed=5, similarity={"probes": False, "bootstrap_resamples": 25, "bootstrap_groups": 6}
    )
    from layerdrift.tasks.similarity.run import compute_similarity

    compute_similarity(run, cfg)
    ci = open_result(run.results(), "similarity_ci")["similarity_ci"]
    sim = open_result(run.results(), "similarity")["similarity"]
    assert ci.dims == ("reference", "checkpoint", "layer", "metric", "bound")
    assert list(ci["bound"].values) == ["low", "high"]
    assert ci.attrs["resamples"] == 25 and ci.attrs["groups"] == 6

    example = xr.open_zarr(run.activations())["example_of_token"].values
    group = example * 6 // 24  # 24 examples in 6 consecutive groups of 4
    counts = resample_counts(25, 6, seed=5)
    x64 = acts.astype(np.float64)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        reference = "base" if a == 0 else "previous"
        for layer in range(acts.shape[1]):
            x_all, y_all = x64[a, layer], x64[b, layer]
            estimate = np.array([REFERENCES[m](x_all, y_all) for m in METRICS])
            values = []
            for weights in counts:
                tokens = np.concatenate(
                    [np.flatnonzero(group == g) for g in range(6) for _ in range(weights[g])]
                )
                x, y = x64[a, layer, tokens], x64[b, layer, tokens]
                values.append([REFERENCES[m](x, y) for m in METRICS])
            values = np.array(values)
            bias = values.mean(axis=0) - estimate
            want = np.percentile(values, [2.5, 97.5], axis=0) - bias
            for i, metric in enumerate(METRICS):
                want[:, i] = np.clip(want[:, i], *METRIC_RANGE[metric])
            want = want.T
            got = ci.sel(reference=reference, checkpoint=sim.checkpoint[b], layer=layer).values
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # A checkpoint against itself does not vary: both bounds are its value.
    same = ci.sel(reference="base", checkpoint="base")
    np.testing.assert_array_equal(
        same.sel(bound="low"), sim.sel(reference="base", checkpoint="base")
    )


def _planted(rng, n, mix):
    """Y a noisy linear map ``mix`` (d, d) of X, every metric away from its bounds."""
    d = mix.shape[0]
    x = rng.standard_normal((n, d)) * np.linspace(0.5, 2.0, d) + 3.0
    return x, x @ mix + 0.8 * rng.standard_normal((n, d))


def _group_moments(x, y, n_groups):
    """Per-group moments of a pair, one token per example, groups of consecutive tokens."""
    a, b = (0, 0), (1, 0)
    shift_x, shift_y = x[:100].mean(0), y[:100].mean(0)
    out = []
    for part in np.array_split(np.arange(x.shape[0]), n_groups):
        sx, sy, xy = moments_from_arrays(x[part], y[part], shift_x, shift_y)
        out.append(({a: sx, b: sy}, {(a, b): xy}))
    return out, (a, b)


def test_intervals_cover_the_exact_value_and_shrink_like_root_n(rng):
    counts = resample_counts(400, 100, seed=0)
    mix = np.eye(8) + 0.3 * rng.standard_normal((8, 8))
    widths = {1_000: [], 16_000: []}  # one population; 16x the data: a quarter of the width
    for n in [*widths] * 3:  # three data sets of each size, widths averaged
        x, y = _planted(rng, n, mix)
        per_group, pair = _group_moments(x, y, 100)
        low, high = bootstrap_intervals(per_group, [pair], counts)[pair]
        exact = all_metrics(*moments_from_arrays(x, y))
        assert (low <= exact).all() and (exact <= high).all(), (n, low, exact, high)
        widths[n].append(high - low)
    ratio = np.mean(widths[1_000], axis=0) / np.mean(widths[16_000], axis=0)
    assert dict(zip(METRICS, ratio, strict=True)) == pytest.approx(
        dict.fromkeys(METRICS, 4.0), rel=0.25
    )


def _feature_space_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of centred (n, d) X and Y as ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) (Kornblith et
    al. 2019, eq. 5): equal to the O(n²) Gram formula, and d × d, so 400 resamples of 600
    tokens take milliseconds instead of minutes."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_feature_space_cka_is_the_gram_formula(rng):
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((50, 3))
    y[:, 0] += x[:, 0]
    assert _feature_space_linear_cka(x, y) == pytest.approx(
        REFERENCES["linear_cka"](x, y), rel=1e-12
    )


def test_a_small_biased_cka_lies_inside_its_interval(rng):
    """Unrelated X and Y: linear CKA is small, and resampling whole groups (duplicates)
    biases it upwards, so the plain percentile interval lies above the estimate; the
    bias-shifted one holds it, with the same width."""
    x, y = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    per_group, pair = _group_moments(x, y, 12)
    counts = resample_counts(400, 12, seed=1)
    cka = METRICS.index("linear_cka")
    low, high = bootstrap_intervals(per_group, [pair], counts)[pair][:, cka]
    exact = all_metrics(*moments_from_arrays(x, y))[cka]
    parts = np.array_split(np.arange(600), 12)  # the groups of _group_moments
    replicates = []
    for weights in counts:  # the plain percentile interval, from the resampled tokens
        tokens = np.concatenate([parts[g] for g in range(12) for _ in range(weights[g])])
        replicates.append(_feature_space_linear_cka(x[tokens], y[tokens]))
    plain_low, plain_high = np.percentile(replicates, [2.5, 97.5])
    assert plain_low > exact  # the failure this interval exists for
    assert low <= exact <= high
    assert high - low == pytest.approx(plain_high - plain_low, rel=1e-9)


def test_grouped_pass_reads_each_chunk_once(tmp_path, rng, monkeypatch):
    """The per-group moments come from one read of the store, as many reads as the plain
    pass (every chunk of every representation once, plus the shifts' first chunk)."""
    from xarray.backends import zarr as xarray_zarr

    from layerdrift.tasks.similarity.accumulate import accumulate_moments, group_moments

    reads = []
    read = xarray_zarr.ZarrArrayWrapper.__getitem__
    monkeypatch.setattr(
        xarray_zarr.ZarrArrayWrapper,
        "__getitem__",
        lambda self, key: reads.append(key) or read(self, key),
    )
    url, acts = random_store(tmp_path / "s.zarr", rng, n_examples=60, token_chunk=32)
    ds = xr.open_zarr(url)
    data, mask = ds["activations"].data, np.ones(acts.shape[2], bool)
    pairs = [((0, 0), (1, 0)), ((0, 0), (2, 0))]
    groups = example_groups(ds["example_of_token"].values, mask, 10)
    accumulate_moments(data, pairs, mask, scheduler="threads")
    plain, reads[:] = len(reads), []
    group_moments(data, pairs, groups, 10)
    n_chunks = len(data.chunks[2])
    assert len(reads) == 3 * n_chunks + 3 and len(reads) <= plain
