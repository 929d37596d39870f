"""Decoder matching and per-latent AUROC against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted import planted_pair
from sklearn.metrics import roc_auc_score

from layerdrift.tasks.features.matching import decoder_cosines, histogram, match_decoders
from layerdrift.tasks.features.task_latents import latent_auroc, segment_max, task_specific_fraction


def _noisy_sae_decoders(rng):
    """Base / fine-tuned "SAE" decoders: planted directions, permuted, with a little noise."""
    pair = planted_pair(rng, n_tokens=10)
    base = pair.D[pair.group <= 1, 0]  # base-only + shared
    ft = pair.D[pair.group >= 1, 1]  # shared + fine-tuned-only
    perm_b, perm_f = rng.permutation(len(base)), rng.permutation(len(ft))
    noise = 0.05
    base = base[perm_b] + noise * rng.standard_normal(base.shape)
    ft = ft[perm_f] + noise * rng.standard_normal(ft.shape)
    shared_ft = (pair.group[pair.group >= 1] == 1)[perm_f]
    return base, ft, shared_ft, perm_b, perm_f, pair


def test_cosines_match_reference(rng):
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((4, 5))
    ref = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a])
    np.testing.assert_allclose(decoder_cosines(a, b), ref, atol=1e-12)
    with pytest.raises(ValueError, match="different spaces"):
        decoder_cosines(a, rng.standard_normal((4, 6)))


def test_matching_finds_the_shared_latents(rng):
    base, ft, shared_ft, perm_b, perm_f, pair = _noisy_sae_decoders(rng)
    result = match_decoders(base, ft)
    matched = result.hungarian_cosine >= 0.7
    np.testing.assert_array_equal(matched, shared_ft)
    np.testing.assert_array_equal(result.best_cosine >= 0.7, shared_ft)
    # Each shared fine-tuned latent is paired with the base latent of the same planted feature.
    base_feature = np.flatnonzero(pair.group <= 1)[perm_b]
    ft_feature = np.flatnonzero(pair.group >= 1)[perm_f]
    np.testing.assert_array_equal(
        base_feature[result.hungarian_index[matched]], ft_feature[matched]
    )
    assert result.matched_fraction(0.7) == pytest.approx(shared_ft.mean())


def test_identical_dictionaries_match_fully(rng):
    W = rng.standard_normal((24, 16))
    result = match_decoders(W, W[rng.permutation(24)])
    assert result.matched_fraction(0.7) == 1.0
    np.testing.assert_allclose(result.hungarian_cosine, 1.0)


def test_hungarian_is_one_to_one_and_optimal(rng):
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    result = match_decoders(a, b)
    assert len(set(result.hungarian_index.tolist())) == 4
    cos = decoder_cosines(a, b)
    from itertools import permutations

    best = max(sum(cos[p[j], j] for j in range(4)) for p in permutations(range(5), 4))
    assert np.nansum(result.hungarian_cosine) == pytest.approx(best)
    # More fine-tuned than base latents: the extra ones stay unmatched.
    wide = match_decoders(b, a)
    assert (wide.hungarian_index == -1).sum() == 1 and np.isnan(wide.hungarian_cosine).sum() == 1


def test_histogram_counts_all_values(rng):
    counts, edges = histogram(np.array([-1.0, 0.0, 0.5, 1.0, np.nan]), 4, -1.0, 1.0)
    assert counts.sum() == 4 and len(edges) == 5


def test_auroc_matches_sklearn_and_separates_a_planted_latent(rng):
    n = 400
    labels = rng.integers(0, 2, n)
    scores = rng.random((n, 6))
    scores[:, 0] = labels + 0.1 * rng.random(n)  # planted: fires for positives
    scores[:, 1] = np.round(scores[:, 1], 1)  # ties
    scores[:, 2] = 0.0  # dead latent
    auroc, _ = latent_auroc(scores, labels)
    ref = [roc_auc_score(labels, scores[:, j]) if j != 2 else 0.5 for j in range(6)]
    np.testing.assert_allclose(auroc, ref, atol=1e-12)
    assert auroc[0] == pytest.approx(1.0)
    assert abs(auroc[3] - 0.5) < 0.1
    assert task_specific_fraction(auroc) == pytest.approx(1 / 6)


def test_multiclass_auroc_takes_the_most_separated_class(rng):
    n = 300
    labels = rng.choice(np.array([3, 7, 9]), n)
    scores = rng.random((n, 3))
    scores[:, 0] = (labels == 7) + 0.1 * rng.random(n)
    scores[:, 1] = -1.0 * (labels == 9) + 0.1 * rng.random(n)  # anti-correlated: AUROC near 0
    auroc, cls = latent_auroc(scores, labels)
    assert auroc[0] == pytest.approx(1.0) and cls[0] == 1
    assert auroc[1] == pytest.approx(0.0) and cls[1] == 2
    ref = max(
        (roc_auc_score(labels == c, scores[:, 2]) for c in (3, 7, 9)), key=lambda a: abs(a - 0.5)
    )
    assert auroc[2] == pytest.approx(ref)
    with pytest.raises(ValueError, match="two classes"):
        latent_auroc(scores, np.zeros(n))


def test_segment_max_accumulates_over_batches(rng):
    values = torch.as_tensor(rng.random((50, 4)))
    segment = torch.as_tensor(np.sort(rng.integers(0, 6, 50)))
    whole = segment_max(values, segment, 7)
    parts = segment_max(values[:20], segment[:20], 7)
    parts = segment_max(values[20:], segment[20:], 7, out=parts)
    torch.testing.assert_close(whole, parts)
    for s in range(7):
        rows = values[segment == s]
        expected = rows.max(dim=0).values if len(rows) else torch.full((4,), -torch.inf)
        torch.testing.assert_close(whole[s], expected.to(whole.dtype))
