"""Intervals of the feature shares: resampling latents, against an explicit resample loop."""

from __future__ import annotations

import numpy as np

from layerdrift.tasks.features.intervals import share_interval


def test_share_interval_matches_explicit_resampling_of_latents():
    rng = np.random.default_rng(3)
    indicator = rng.random(400) < 0.3
    low, high = share_interval(indicator, resamples=4000)
    # The same bootstrap done the slow way: draw the latents themselves with replacement.
    slow = [indicator[rng.integers(0, 400, 400)].mean() for _ in range(4000)]
    expected = np.percentile(slow, [2.5, 97.5])
    np.testing.assert_allclose([low, high], expected, atol=0.01)
    assert low < indicator.mean() < high


def test_share_interval_shrinks_like_one_over_root_n_and_is_seeded():
    widths = []
    for n in (100, 400, 1600):
        indicator = np.arange(n) % 4 == 0  # share exactly 0.25
        low, high = share_interval(indicator)
        widths.append(high - low)
    np.testing.assert_allclose(widths[0] / widths[1], 2.0, rtol=0.15)
    np.testing.assert_allclose(widths[1] / widths[2], 2.0, rtol=0.15)
    indicator = np.arange(50) % 3 == 0
    assert share_interval(indicator) == share_interval(indicator)
    assert np.isnan(share_interval(np.array([], dtype=bool))).all()
    assert share_interval(np.ones(30, dtype=bool)) == [1.0, 1.0]


def _textbook_fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum())


def test_example_fvu_interval_equals_resampling_the_examples_tokens():
    import torch

    from layerdrift.tasks.dictionary import FVUAccumulator
    from layerdrift.tasks.features.intervals import ExampleFVU, example_resamples

    rng = np.random.default_rng(5)
    counts = rng.integers(2, 9, 12)  # 12 examples of 2..8 tokens; example 3 has none held out
    example = np.repeat(np.arange(12), counts)
    example = example[example != 3]
    x = rng.standard_normal((example.size, 6)) * np.linspace(0.5, 2, 6) + 1.0
    x_hat = x + 0.5 * rng.standard_normal(x.shape) * (1 + example[:, None] % 3)
    acc, exact = ExampleFVU(12, 6), FVUAccumulator()
    for part in np.array_split(np.arange(example.size), 3):  # any batching
        t, th = torch.from_numpy(x[part]), torch.from_numpy(x_hat[part])
        acc.update(t, th, torch.from_numpy(example[part]))
        exact.update(t, th)
    np.testing.assert_allclose([acc.fvu, exact.fvu], _textbook_fvu(x, x_hat), rtol=1e-12)

    low, high = acc.interval(resamples=200, seed=7)
    assert low < acc.fvu < high
    # The slow way: the resampled examples' tokens themselves, the textbook formula.
    present = np.array([e for e in range(12) if e != 3])
    slow = []
    for weights in example_resamples(present.size, 200, 7):
        drawn = np.repeat(present, weights)
        rows = np.concatenate([np.flatnonzero(example == e) for e in drawn])
        slow.append(_textbook_fvu(x[rows], x_hat[rows]))
    np.testing.assert_allclose([low, high], np.percentile(slow, [2.5, 97.5]), rtol=1e-10)
    assert np.isnan(ExampleFVU(4, 6).interval()).all() and np.isnan(ExampleFVU(4, 6).fvu)
