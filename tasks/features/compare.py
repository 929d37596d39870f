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
from layerdrift.tasks.features.intervals import share_interval
from layerdrift.tasks.features.matching import MatchResult, histogram, match_decoders
from layerdrift.tasks.features.scan import (
    MODELS,
    DictionaryView,
    LayerScan,
    loader_layer,
    scan_layer,
)
from layerdrift.tasks.features.task_latents import (
    latent_auroc,
    task_specific_fraction,
    task_specific_mask,
)

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


def _fractions(
    auroc: dict, alive: dict, groups: np.ndarray, fcfg: FeaturesConfig
) -> tuple[dict, dict]:
    """Share of task-specific live latents per source of :data:`SOURCES`, and its 95%
    interval over resampled latents."""
    hi, lo = fcfg.auroc_high, fcfg.auroc_low
    values = {name: auroc[name][alive[name]] for name in ("base_sae", "finetuned_sae")}
    for i, g in enumerate(GROUPS):
        values[f"crosscoder_{g}"] = auroc["crosscoder"][(groups == i) & alive["crosscoder"]]
    fractions = {name: task_specific_fraction(v, hi, lo) for name, v in values.items()}
    intervals = {name: share_interval(task_specific_mask(v, hi, lo)) for name, v in values.items()}
    return fractions, intervals


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
        "transfer_fvu_ci": {
            f"{sae}_on_{model}": scan.fvu_examples[(f"{sae}_sae", model)].interval()
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


def _control_summary(
    scan: LayerScan,
    base: DictionaryView,
    control: DictionaryView | None,
    alive: dict,
    threshold: float,
) -> dict:
    """``matched_fraction_control`` (control SAE matched to the base SAE like the fine-tuned
    one) and ``transfer_fvu_control`` (control SAE on base activations); NaN without one."""
    nan = float("nan")
    if control is None:
        return {
            "matched_fraction_control": nan,
            "matched_fraction_control_ci": [nan, nan],
            "transfer_fvu_control": nan,
            "transfer_fvu_control_ci": [nan, nan],
        }
    live = alive[control.source]
    match = match_decoders(base.decoder[alive[base.source]], control.decoder[live])
    return {
        "matched_fraction_control": match.matched_fraction(threshold, one_to_one=True),
        "matched_fraction_control_ci": share_interval(match.matched(threshold)),
        "transfer_fvu_control": scan.fvu[(control.source, "base")].fvu,
        "transfer_fvu_control_ci": scan.fvu_examples[(control.source, "base")].interval(),
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
    control: DictionaryView | None = None,
) -> dict:
    """Every per-layer comparison as a JSON-ready dict (see :func:`tasks.features.run`).

    ``base``/``finetuned`` are the SAEs (``source`` names ``base_sae``/``finetuned_sae``),
    ``crosscoder`` the pair dictionary (``crosscoder``) with decoder [d_sae, 2, d_in];
    ``control`` (``control_sae``, reads ``base``) a second SAE of the base activations
    (:mod:`.control`): without it the two control entries are NaN.
    """
    layer = loader_layer(loader)
    views = [base, finetuned, crosscoder]
    scan = scan_layer(loader, views + ([control] if control else []), batch_size, device,
                      max_heldout_tokens)  # fmt: skip
    alive = {name: fires > 0 for name, fires in scan.fires.items()}
    auroc = {v.source: latent_auroc(scan.scores[v.source], scan.labels)[0] for v in views}
    match = _matching(base, finetuned, alive)
    rel, groups, counts = _crosscoder_groups(crosscoder, alive["crosscoder"], fcfg)
    fractions, fraction_intervals = _fractions(auroc, alive, groups, fcfg)
    live_groups = groups[alive["crosscoder"]]
    result = {
        "layer": layer,
        "checkpoints": [c for c, _ in loader.sources],
        "n_heldout_tokens": scan.n_heldout_tokens,
        "crosscoder_counts": counts,
        "crosscoder_share_ci": {g: share_interval(live_groups == i) for i, g in enumerate(GROUPS)},
        "matched_fraction": match.matched_fraction(fcfg.match_threshold, one_to_one=True),
        "matched_fraction_ci": share_interval(match.matched(fcfg.match_threshold)),
        "best_match_fraction": match.matched_fraction(fcfg.match_threshold, one_to_one=False),
        "task_specific_fraction": fractions,
        "task_specific_fraction_ci": fraction_intervals,
        **_summary(scan, match, rel, alive, auroc, fcfg.hist_bins),
        **_control_summary(scan, base, control, alive, fcfg.match_threshold),
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
