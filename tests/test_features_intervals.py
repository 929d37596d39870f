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
