"""The report's summary sentences: each states a difference only where it clears its control
or its 95% interval, and says so where it does not.

Every function takes per-layer values (pandas, index = layer) and, where the run has them,
the intervals as a frame of ``low``, ``high`` (and ``control_low``, ``control_high``)
columns by layer; without intervals the point values against the control decide.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HIGH_SIMILARITY = 0.9


def similarity_sentence(
    cos: pd.Series, threshold: float = HIGH_SIMILARITY, bounds: pd.DataFrame | None = None
) -> str:
    """Describe where the per-layer cosine ``cos`` (index = layer) falls below ``threshold``.

    With ``bounds`` (columns low, high by layer: 95% intervals) the fall from the first
    layer to the lowest is called clear only when their intervals do not overlap.
    """
    low = cos[cos < threshold]
    lowest_layer = int(cos.idxmin())
    if low.empty:
        return (
            f"Mean per-token cosine of final to base stays ≥ {threshold} at every layer "
            f"(lowest {cos.min():.3f}, layer {lowest_layer})."
        )
    first = int(low.index[0])
    if first == int(cos.index[0]):
        head = (
            f"Mean per-token cosine of final to base is already {cos.iloc[0]:.3f} at layer {first}"
        )
    else:
        kept = int(cos.index[cos.index.get_loc(first) - 1])
        head = f"Mean per-token cosine of final to base stays ≥ {threshold} up to layer {kept}"
    line = f"{head} and falls to {cos.min():.3f} at layer {lowest_layer}"
    top = int(cos.index[0])
    if bounds is None or lowest_layer == top or bounds.isna().any(axis=None):
        return line + "."
    if bounds.loc[lowest_layer, "high"] < bounds.loc[top, "low"]:
        return line + f", beyond the 95% intervals of layers {top} and {lowest_layer}."
    return line + (
        f"; the 95% intervals of layers {top} and {lowest_layer} overlap "
        f"({_bounds(bounds, top)} and {_bounds(bounds, lowest_layer)}), so that fall is not "
        "a clear one."
    )


def probe_sentence(layered: pd.DataFrame) -> str:
    """Where the final checkpoint's probe is most accurate, said as a finding only where it
    beats both its controls: the same probe on shuffled labels and the majority class."""
    acc = layered["probe_final"]
    best = int(acc.idxmax())
    base = layered["probe_base"].loc[best] if "probe_base" in layered else np.nan
    line = (
        f"A linear probe on the final checkpoint is most accurate at layer {best} "
        f"({acc.loc[best]:.3f}; base there: {base:.3f})"
    )
    if "probe_control_final" not in layered or "probe_majority" not in layered:
        return line + "."
    bar = layered[["probe_control_final", "probe_majority"]].max(axis=1)
    controls = (
        f"the same probe on shuffled labels scores {layered['probe_control_final'].loc[best]:.3f} "
        f"there, and always guessing the majority class {layered['probe_majority'].loc[best]:.3f}"
    )
    if acc.loc[best] <= bar.loc[best]:
        return (
            f"No linear probe on the final checkpoint beats its controls: the best, layer "
            f"{best} ({acc.loc[best]:.3f}), is within them ({controls}), so the probes say "
            "nothing at this probe size."
        )
    behind = [int(layer) for layer in acc.index if not acc.loc[layer] > bar.loc[layer]]
    tail = f"; at layers {_layers(behind)} the probe does not beat them." if behind else "."
    return f"{line}, above its controls ({controls}){tail}"


def transfer_sentence(layered: pd.DataFrame, bounds: pd.DataFrame | None) -> str:
    """Whether the fine-tuned SAE reconstructs base tokens worse than a second base SAE of
    another seed does (``transfer_fvu`` finetuned_on_base against ``transfer_fvu_control``).

    A layer discriminates when the fine-tuned SAE's FVU is above the control's by more than
    their 95% intervals (``bounds``: ``low``, ``high``, ``control_low``, ``control_high``;
    without them, by the point values); elsewhere the control is as far off.
    """
    pairs = layered[["transfer_fvu_finetuned_on_base", "transfer_fvu_control"]].dropna()
    pairs.columns = ["fvu", "control"]
    if pairs.empty:
        return "The transfer FVU has no control at any layer (no control SAE was compared)."
    if bounds is not None and bounds.reindex(pairs.index).notna().all(axis=None):
        clear = bounds["low"] > bounds["control_high"]
        within = [
            f"layer {int(layer)} {pairs.loc[layer, 'fvu']:.3f} ({_bounds(bounds, layer)}) vs "
            f"control {pairs.loc[layer, 'control']:.3f} ({_bounds(bounds, layer, 'control_')})"
            for layer in pairs.index
            if not clear.get(layer, False)
        ]
    else:
        clear = pairs["fvu"] > pairs["control"]
        within = [
            f"layer {int(layer)} {pairs.loc[layer, 'fvu']:.3f} vs control "
            f"{pairs.loc[layer, 'control']:.3f}"
            for layer in pairs.index
            if not clear.get(layer, False)
        ]
    apart = [int(layer) for layer in pairs.index if clear.get(layer, False)]
    line = ""
    if apart:
        line = (
            "The fine-tuned SAE reconstructs base tokens worse than a second base SAE does at "
            f"layers {_layers(apart)} ("
            + ", ".join(
                f"{pairs.loc[layer, 'fvu']:.3f} vs control {pairs.loc[layer, 'control']:.3f}"
                for layer in apart
            )
            + ")"
        )
    if not within:
        return line + "."
    rest = (
        f"the transfer FVU is within its control ({'; '.join(within)}): at this budget the "
        "comparison does not discriminate."
    )
    return f"{line}; elsewhere {rest}" if apart else f"At every layer {rest}"


def floor_sentence(
    to_base: pd.Series,
    floor: pd.Series,
    bounds: pd.DataFrame | None = None,
    floor_bounds: pd.DataFrame | None = None,
) -> str:
    """Where final's linear CKA to base (index = layer) sits between its CKA to a random
    copy of the model (``floor``) and 1, per layer, as the share of that span.

    A layer whose similarity to base does not clear the floor (its 95% interval,
    ``bounds``, overlaps the floor's, ``floor_bounds``; without intervals, a point value
    not above the floor) is named: there the similarity to base says nothing beyond what
    an untrained network of this shape gives.
    """
    span = (to_base - floor) / (1.0 - floor)
    parts = [
        f"layer {int(layer)} {to_base.loc[layer]:.3f} (floor {floor.loc[layer]:.3f}, "
        f"{span.loc[layer]:.0%} of the way to 1)"
        for layer in to_base.index
    ]
    line = (
        "Linear CKA of final to base against the floor of a seeded random copy of the "
        f"model: {', '.join(parts)}."
    )
    both = bounds is not None and floor_bounds is not None
    if both and bounds.reindex(to_base.index).notna().all(axis=None):
        clear = bounds["low"] > floor_bounds["high"]
        how = "its 95% interval overlaps the floor's"
    else:
        clear = to_base > floor
        how = "it is not above the floor"
    below = [int(layer) for layer in to_base.index if not clear.get(layer, False)]
    if not below:
        return line + " Every layer clears its floor."
    return line + (
        f" At layers {_layers(below)} {how}: there final is no more like base than like "
        "an untrained network, and the similarity says nothing about fine-tuning."
    )


def cka_drop_sentence(cka: pd.Series, bounds: pd.DataFrame | None) -> str:
    """Where linear CKA (final vs base, index = layer) drops most, and whether that drop
    clears the 95% intervals of the two layers (``bounds``: columns low, high by layer)."""
    drops = -cka.diff().iloc[1:]
    at = int(drops.idxmax())
    before = int(cka.index[cka.index.get_loc(at) - 1])
    line = (
        f"Linear CKA drops most between layers {before} and {at} "
        f"({cka.loc[before]:.3f} → {cka.loc[at]:.3f})"
    )
    if bounds is not None and bounds.notna().all(axis=None):
        if bounds.loc[at, "high"] < bounds.loc[before, "low"]:
            line += ", beyond both layers' 95% intervals"
        else:
            line += (
                f"; the layers' 95% intervals overlap ({_bounds(bounds, before)} and "
                f"{_bounds(bounds, at)}), so that drop is not a clear one"
            )
    return line + f"; it ends at {cka.iloc[-1]:.3f}."


def _bounds(bounds: pd.DataFrame, layer: int, prefix: str = "") -> str:
    return f"{bounds.loc[layer, prefix + 'low']:.3f}–{bounds.loc[layer, prefix + 'high']:.3f}"


def matching_control_sentence(layered: pd.DataFrame, bounds: pd.DataFrame | None) -> str:
    """Whether the SAE matching tells base and final apart, per layer: the matched fraction
    of final vs base against that of a second base SAE (another seed) vs base.

    A layer discriminates when final matches base less than the control does, by more than
    their 95% intervals (``bounds``, see :func:`_matching_bounds`; without them, by the
    point values). Elsewhere the control is as far apart, and the matching cannot tell
    fine-tuning from another seed at this budget.
    """
    pairs = layered[["matched_fraction", "matched_fraction_control"]].dropna()
    if pairs.empty:
        return "The SAE matching has no control at any layer (no control SAE was compared)."
    if bounds is not None and bounds.reindex(pairs.index).notna().all(axis=None):
        clear = bounds["high"] < bounds["control_low"]
    else:
        clear = pairs["matched_fraction"] < pairs["matched_fraction_control"]
    apart = [int(layer) for layer in pairs.index if clear.get(layer, False)]
    same = [int(layer) for layer in pairs.index if layer not in apart]
    if not apart:
        return (
            "SAE matching does not discriminate at this budget: at no layer does the final "
            "SAE match the base SAE clearly less than a second base SAE of another seed does "
            f"(control {_span(pairs['matched_fraction_control'])}, final "
            f"{_span(pairs['matched_fraction'])}), so the matched fraction says nothing about "
            "fine-tuning here."
        )
    line = (
        f"Fewer final-SAE latents match base than a control SAE's at layers "
        f"{_layers(apart)} ({_pairs_text(pairs.loc[apart])})"
    )
    if same:
        return line + f"; at layers {_layers(same)} the matching does not discriminate."
    return line + "."


def _layers(layers) -> str:
    return ", ".join(str(int(layer)) for layer in layers)


def _span(values: pd.Series) -> str:
    low, high = f"{values.min():.3f}", f"{values.max():.3f}"
    return low if low == high else f"{low}–{high}"


def _pairs_text(pairs: pd.DataFrame) -> str:
    return ", ".join(
        f"{row.matched_fraction:.3f} vs control {row.matched_fraction_control:.3f}"
        for row in pairs.itertuples()
    )


def finetuned_only_sentence(share: pd.Series, bounds: pd.DataFrame | None = None) -> str:
    """Where fine-tuned-only crosscoder latents (share of live latents per layer) peak.

    A peak of zero is no peak: the sentence then says there are none. With ``bounds``
    (columns low, high by layer: the share's 95% interval over latents) it says whether
    the peak clears the other layers.
    """
    if not (share.fillna(0.0) > 0).any():
        return "No crosscoder latent is specific to the fine-tuned model at any layer."
    peak = int(share.idxmax())
    line = (
        f"Crosscoder latents specific to the fine-tuned model are most common at layer "
        f"{peak} ({share.max():.1%} of live latents)"
    )
    if bounds is None or bounds.isna().any(axis=None) or len(share) < 2:
        return line + "."
    others = bounds.drop(index=peak)
    if bounds.loc[peak, "low"] > others["high"].max():
        return line + ", above every other layer's 95% interval."
    return line + "; its 95% interval overlaps another layer's, so the peak is not a clear one."
