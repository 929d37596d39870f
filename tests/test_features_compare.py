"""The per-layer comparison on planted data with oracle dictionaries: every number is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted import planted_pair
from test_features_crosscoder import TOKENS_PER_EXAMPLE, _store, loader_for

from layerdrift.config import FeaturesConfig
from layerdrift.tasks.features.compare import compare_layer
from layerdrift.tasks.features.crosscoder import relative_norm_deviation
from layerdrift.tasks.features.scan import DictionaryView

PLANTED = 8  # a shared feature that fires only in positive examples


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Σ‖x − x̂‖² / Σ‖x − mean(x)‖², directly."""
    x, x_hat = x.double(), x_hat.double()
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def _oracle(source: str, reads: str, D: np.ndarray) -> DictionaryView:
    """A dictionary that decodes with the planted directions D [f, d] (or [f, 2, d])."""
    flat = torch.as_tensor(D.reshape(len(D), -1), dtype=torch.float32)
    pinv = torch.linalg.pinv(flat)  # [d, f]

    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.reshape(len(x), -1) @ pinv)

    def decode(f: torch.Tensor) -> torch.Tensor:
        return (f @ flat).reshape(len(f), *D.shape[1:])

    return DictionaryView(source, reads, encode, decode, D)


@pytest.fixture(scope="module")
def layer_result(tmp_path_factory):
    rng = np.random.default_rng(5)
    pair = planted_pair(rng, n_tokens=8000, d_in=32)
    n_ex = 8000 // TOKENS_PER_EXAMPLE
    labels = np.arange(n_ex) % 2
    token_label = np.repeat(labels, TOKENS_PER_EXAMPLE)
    codes = pair.codes.copy()
    codes[token_label == 0, PLANTED] = 0.0
    codes[np.flatnonzero(token_label == 1)[3::TOKENS_PER_EXAMPLE], PLANTED] = (
        2.5  # token 3, above any draw
    )
    x = np.einsum("tf,fmi->tmi", codes, pair.D).astype(np.float32)
    url = _store(tmp_path_factory.mktemp("cmp"), x)
    source = loader_for(url, heldout_fraction=0.2)
    base = _oracle("base_sae", "base", pair.D[pair.group <= 1, 0])
    ft = _oracle("finetuned_sae", "finetuned", pair.D[pair.group >= 1, 1])
    cc = _oracle("crosscoder", "pair", pair.D)
    result = compare_layer(source, base, ft, cc, FeaturesConfig(card_latents=2, card_examples=3))
    return result, source, base, pair


def test_counts_matching_and_fractions(layer_result):
    result, _, _, pair = layer_result
    assert result["crosscoder_counts"] == {"base_only": 8, "shared": 16, "finetuned_only": 8}
    assert result["crosscoder_dead"] == 0
    assert result["matched_fraction"] == pytest.approx(16 / 24)
    assert result["best_match_fraction"] == pytest.approx(16 / 24)
    assert sum(result["match_cosine_hist"]["hungarian"]) == 24
    assert sum(result["relative_norm_hist"]) == 32
    # 16 exclusive latents (|r - 0.5| = 0.5) and 16 shared ones with equal norms (r = 0.5).
    shared_rel = np.linalg.norm(pair.D[pair.group == 1], axis=2)
    shared_rel = shared_rel[:, 1] / shared_rel.sum(axis=1)
    expected = 2 * (16 * 0.5 + np.abs(shared_rel - 0.5).sum()) / 32
    assert result["relative_norm_deviation"] == pytest.approx(expected)
    fractions = result["task_specific_fraction"]
    assert fractions["base_sae"] == pytest.approx(1 / 24)
    assert fractions["finetuned_sae"] == pytest.approx(1 / 24)
    assert fractions["crosscoder_shared"] == pytest.approx(1 / 16)
    assert fractions["crosscoder_base_only"] == 0 and fractions["crosscoder_finetuned_only"] == 0


def test_transfer_fvu_directions(layer_result):
    result, source, base, _ = layer_result
    fvus = result["transfer_fvu"]
    assert fvus["base_on_base"] < 1e-6 and fvus["finetuned_on_finetuned"] < 1e-6
    assert fvus["base_on_finetuned"] > 0.1 and fvus["finetuned_on_base"] > 0.1
    # The scan's streaming FVU equals the direct formula on the held-out tokens.
    held = torch.as_tensor(source.heldout()[0])
    x = held[:, 1]
    assert fvus["base_on_finetuned"] == pytest.approx(fvu(x, base.decode(base.encode(x))), rel=1e-6)
    assert result["n_heldout_tokens"] == len(held)


def test_cards_show_the_planted_latent(layer_result):
    result, _, _, _ = layer_result
    cards = result["cards"]
    reasons = {(c["source"], c["reason"]) for c in cards}
    assert ("crosscoder", "base_only") in reasons and ("finetuned_sae", "unmatched") in reasons
    top = next(c for c in cards if c["source"] == "base_sae" and c["reason"] == "task_specific")
    assert top["latent"] == PLANTED and top["auroc"] == pytest.approx(1.0)
    assert len(top["examples"]) == 3
    for ex in top["examples"]:
        assert ex["label"] == 1
        assert len(ex["tokens"]) == len(ex["activations"])
        assert ex["activations"][ex["max_token"]] == max(ex["activations"])
        assert ex["tokens"][ex["max_token"]] == f"t{ex['example'] * TOKENS_PER_EXAMPLE + 3}"


def test_relative_norm_deviation_bounds():
    assert relative_norm_deviation(np.full(10, 0.5)) == 0.0
    assert relative_norm_deviation(np.array([0.0, 1.0, 1.0])) == 1.0
    assert relative_norm_deviation(np.array([0.0, 0.5, 1.0, 0.75])) == pytest.approx(0.625)
    assert np.isnan(relative_norm_deviation(np.array([])))
