"""Per-layer comparison of base and fine-tuned features, from three trained dictionaries.

:func:`compare_layer` scans the layer once (:mod:`tasks.features.scan`) and derives the
transfer FVUs, the decoder matching of the two SAEs, the crosscoder's groups, per-latent
AUROCs and the feature cards. Dead latents (never active on held-out tokens) are left out of
matching, counts and fractions: their decoders are untrained noise.
"""

from __future__ import annotations

import logging

import numpy as np

from layerdrift.config import FeaturesConfig
from layerdrift.tasks.dictionary import ActivationLoader
from layerdrift.tasks.features.cards import build_card, pick_latents
from layerdrift.tasks.features.crosscoder import (
    GROUPS,
    classify_latents,
    relative_norm_deviation,
    relative_norms,
)
from layerdrift.tasks.features.matching import MatchResult, histogram, match_decoders
from layerdrift.tasks.features.scan import (
    MODELS,
    DictionaryView,
    LayerScan,
    loader_layer,
    scan_layer,
)
from layerdrift.tasks.features.task_latents import latent_auroc, task_specific_fraction

logger = logging.getLogger(__name__)

SOURCES = (
    "base_sae",
    "finetuned_sae",
    "crosscoder_base_only",
    "crosscoder_shared",
    "crosscoder_finetuned_only",
)


def _hist(values: np.ndarray, bins: int) -> list[int]:
    return histogram(values, bins, 0.0, 1.0)[0].tolist()


def _matching(base: DictionaryView, finetuned: DictionaryView, alive: dict) -> MatchResult:
    """Decoder matching of the two SAEs' live latents."""
    live_b, live_f = alive["base_sae"], alive["finetuned_sae"]
    return match_decoders(base.decoder[live_b], finetuned.decoder[live_f])


def _crosscoder_groups(
    crosscoder: DictionaryView, live: np.ndarray, fcfg: FeaturesConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Relative norms [d_sae], groups [d_sae] and live latents per group."""
    rel = relative_norms(np.linalg.norm(crosscoder.decoder, axis=2))  # decoder [d_sae, 2, d]
    groups = classify_latents(rel, fcfg.base_only_below, fcfg.finetuned_only_above)
    counts = {g: int(((groups == i) & live).sum()) for i, g in enumerate(GROUPS)}
    return rel, groups, counts


def _fractions(auroc: dict, alive: dict, groups: np.ndarray, fcfg: FeaturesConfig) -> dict:
    """Share of task-specific live latents per source of :data:`SOURCES`."""
    hi, lo = fcfg.auroc_high, fcfg.auroc_low
    fractions = {
        name: task_specific_fraction(auroc[name][alive[name]], hi, lo)
        for name in ("base_sae", "finetuned_sae")
    }
    for i, g in enumerate(GROUPS):
        selected = (groups == i) & alive["crosscoder"]
        fractions[f"crosscoder_{g}"] = task_specific_fraction(auroc["crosscoder"][selected], hi, lo)
    return fractions


def _summary(
    scan: LayerScan, match: MatchResult, rel: np.ndarray, alive: dict, auroc: dict, bins: int
) -> dict:
    """The FVU, matching and histogram entries of a layer's result."""
    live_c = alive["crosscoder"]
    return {
        "crosscoder_dead": int((~live_c).sum()),
        "sae_alive": {name: int(alive[name].sum()) for name in ("base_sae", "finetuned_sae")},
        "transfer_fvu": {
            f"{sae}_on_{model}": scan.fvu[(f"{sae}_sae", model)].fvu
            for sae in MODELS
            for model in MODELS
        },
        "crosscoder_fvu": {m: scan.fvu[("crosscoder", m)].fvu for m in MODELS},
        "match_cosine_hist": {
            "best": _hist(match.best_cosine, bins),
            "hungarian": _hist(match.hungarian_cosine, bins),
        },
        "relative_norm_hist": _hist(rel[live_c], bins),
        "relative_norm_deviation": relative_norm_deviation(rel[live_c]),
        "auroc_hist": {name: _hist(a[alive[name]], bins) for name, a in auroc.items()},
        "hist_bins": bins,
    }


def compare_layer(
    loader: ActivationLoader,
    base: DictionaryView,
    finetuned: DictionaryView,
    crosscoder: DictionaryView,
    fcfg: FeaturesConfig,
    batch_size: int = 4096,
    device="cpu",
    max_heldout_tokens: int | None = None,
) -> dict:
    """Every per-layer comparison as a JSON-ready dict (see :func:`tasks.features.run`).

    ``base``/``finetuned`` are the SAEs (``source`` names ``base_sae``/``finetuned_sae``),
    ``crosscoder`` the pair dictionary (``crosscoder``) with decoder [d_sae, 2, d_in].
    """
    layer = loader_layer(loader)
    views = [base, finetuned, crosscoder]
    scan = scan_layer(loader, views, batch_size, device, max_heldout_tokens)
    alive = {name: fires > 0 for name, fires in scan.fires.items()}
    auroc = {name: latent_auroc(scores, scan.labels)[0] for name, scores in scan.scores.items()}
    match = _matching(base, finetuned, alive)
    rel, groups, counts = _crosscoder_groups(crosscoder, alive["crosscoder"], fcfg)
    result = {
        "layer": layer,
        "checkpoints": [c for c, _ in loader.sources],
        "n_heldout_tokens": scan.n_heldout_tokens,
        "crosscoder_counts": counts,
        "matched_fraction": match.matched_fraction(fcfg.match_threshold, one_to_one=True),
        "best_match_fraction": match.matched_fraction(fcfg.match_threshold, one_to_one=False),
        "task_specific_fraction": _fractions(auroc, alive, groups, fcfg),
        **_summary(scan, match, rel, alive, auroc, fcfg.hist_bins),
    }
    best_cos = np.full(finetuned.d_sae, np.nan)
    best_cos[alive["finetuned_sae"]] = match.best_cosine
    picks = pick_latents(
        auroc, alive, rel, best_cos, fcfg.card_latents,
        fcfg.base_only_below, fcfg.finetuned_only_above,
    )  # fmt: skip
    by_name = {view.source: view for view in views}
    card_opts = {"n_examples": fcfg.card_examples, "context": fcfg.card_context, "device": device}
    result["cards"] = [
        build_card(loader, by_name[p.source], p, scan.scores[p.source], layer, **card_opts)
        for p in picks
    ]
    logger.info(
        "layer %d: crosscoder %s, matched %.3f, transfer %s", layer, counts,
        result["matched_fraction"], {k: round(v, 3) for k, v in result["transfer_fvu"].items()},
    )  # fmt: skip
    return result
