"""Per-layer comparison of base and fine-tuned features, from three trained dictionaries.

:func:`compare_layer` scans the layer once (:mod:`tasks.features.scan`) and derives the
transfer FVUs, the decoder matching of the two SAEs, the crosscoder's groups, per-latent
AUROCs and the feature cards. Dead latents (never active on held-out tokens) are left out of
matching, counts and fractions: their decoders are untrained noise.
"""

from __future__ import annotations

import logging

import numpy as np

from layerdrift.tasks.features.cards import build_card, pick_latents
from layerdrift.tasks.features.config import FeaturesConfig
from layerdrift.tasks.features.crosscoder import GROUPS, classify_latents, relative_norms
from layerdrift.tasks.features.matching import histogram, match_decoders
from layerdrift.tasks.features.scan import MODELS, Dictionary, loader_layer, scan_layer
from layerdrift.tasks.features.task_latents import latent_auroc, task_specific_fraction
from layerdrift.tasks.sae.loader import ActivationLoader

logger = logging.getLogger(__name__)

SOURCES = (
    "base_sae",
    "finetuned_sae",
    "crosscoder_base_only",
    "crosscoder_shared",
    "crosscoder_finetuned_only",
)


def _hist(values: np.ndarray, bins: int, lo: float, hi: float) -> list[int]:
    return histogram(values, bins, lo, hi)[0].tolist()


def relative_norm_deviation(rel_norm: np.ndarray) -> float:
    """``2 · mean |r - 0.5|`` of relative decoder norms [n]: 0 when every latent writes
    equally into both models, 1 when every latent is exclusive to one (NaN for none).

    A threshold-free summary of how far a crosscoder's latents lean to one model, to read
    beside the group counts (a TopK crosscoder rarely drives a decoder all the way to 0).
    """
    rel_norm = np.asarray(rel_norm, dtype=np.float64)
    return float(2 * np.abs(rel_norm - 0.5).mean()) if rel_norm.size else float("nan")


def compare_layer(
    loader: ActivationLoader,
    base: Dictionary,
    finetuned: Dictionary,
    crosscoder: Dictionary,
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
    dictionaries = [base, finetuned, crosscoder]
    scan = scan_layer(loader, dictionaries, batch_size, device, max_heldout_tokens)
    alive = {name: fires > 0 for name, fires in scan.fires.items()}
    auroc = {name: latent_auroc(scores, scan.labels)[0] for name, scores in scan.scores.items()}

    # Decoder matching between the two SAEs, over live latents.
    live_b, live_f = alive["base_sae"], alive["finetuned_sae"]
    match = match_decoders(base.decoder[live_b], finetuned.decoder[live_f])
    best_cos = np.full(finetuned.d_sae, np.nan)
    best_cos[live_f] = match.best_cosine

    # Crosscoder groups by relative decoder norm (fine-tuned share), over live latents.
    norms = np.linalg.norm(crosscoder.decoder, axis=2)  # [d_sae, 2]
    rel = relative_norms(norms)
    groups = classify_latents(rel, fcfg.base_only_below, fcfg.finetuned_only_above)
    live_c = alive["crosscoder"]
    counts = {g: int(((groups == i) & live_c).sum()) for i, g in enumerate(GROUPS)}

    hi, lo = fcfg.auroc_high, fcfg.auroc_low
    fractions = {
        "base_sae": task_specific_fraction(auroc["base_sae"][live_b], hi, lo),
        "finetuned_sae": task_specific_fraction(auroc["finetuned_sae"][live_f], hi, lo),
    }
    for i, g in enumerate(GROUPS):
        fractions[f"crosscoder_{g}"] = task_specific_fraction(
            auroc["crosscoder"][(groups == i) & live_c], hi, lo
        )
    transfer = {
        f"{sae}_on_{model}": scan.fvu[(f"{sae}_sae", model)].fvu
        for sae in MODELS
        for model in MODELS
    }
    bins = fcfg.hist_bins
    result = {
        "layer": layer,
        "checkpoints": [c for c, _ in loader.sources],
        "n_heldout_tokens": scan.n_heldout_tokens,
        "crosscoder_counts": counts,
        "crosscoder_dead": int((~live_c).sum()),
        "sae_alive": {"base_sae": int(live_b.sum()), "finetuned_sae": int(live_f.sum())},
        "matched_fraction": match.matched_fraction(fcfg.match_threshold, one_to_one=True),
        "best_match_fraction": match.matched_fraction(fcfg.match_threshold, one_to_one=False),
        "task_specific_fraction": fractions,
        "transfer_fvu": transfer,
        "crosscoder_fvu": {m: scan.fvu[("crosscoder", m)].fvu for m in MODELS},
        "match_cosine_hist": {
            "best": _hist(match.best_cosine, bins, 0.0, 1.0),
            "hungarian": _hist(match.hungarian_cosine, bins, 0.0, 1.0),
        },
        "relative_norm_hist": _hist(rel[live_c], bins, 0.0, 1.0),
        "relative_norm_deviation": relative_norm_deviation(rel[live_c]),
        "auroc_hist": {name: _hist(a[alive[name]], bins, 0.0, 1.0) for name, a in auroc.items()},
        "hist_bins": bins,
    }
    picks = pick_latents(
        auroc, alive, rel, best_cos, fcfg.card_latents,
        fcfg.base_only_below, fcfg.finetuned_only_above,
    )  # fmt: skip
    by_name = {d.source: d for d in (base, finetuned, crosscoder)}
    card_opts = {"n_examples": fcfg.card_examples, "context": fcfg.card_context, "device": device}
    result["cards"] = [
        build_card(loader, by_name[p.source], p, scan.scores[p.source], layer, **card_opts)
        for p in picks
    ]
    logger.info(
        "layer %d: crosscoder %s, matched %.3f, transfer %s",
        layer, counts, result["matched_fraction"],
        {k: round(v, 3) for k, v in transfer.items()},
    )  # fmt: skip
    return result
