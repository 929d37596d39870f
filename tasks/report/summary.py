"""The per-layer summary table and the short summary, both derived from results.zarr.

The table has one row per layer: every similarity of the final checkpoint to base, the mean
per-token drift, probe accuracy of base and final with the final probe's control-task
accuracy and the majority-class rate, SAE FVU and L0 of base and final, and the
feature comparison (matched fraction, transfer FVUs, crosscoder groups and lean,
task-specific fractions), each column present only when its stage ran.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerdrift.tasks.report.load import ReportInputs

HIGH_SIMILARITY = 0.9
COUNT_COLUMNS = ("crosscoder_base_only", "crosscoder_shared", "crosscoder_finetuned_only")
# transfer_fvu directions shown per layer: the base SAE on the fine-tuned model's tokens, the
# fine-tuned SAE on its own (the README's feature table) and on the base model's tokens (what
# transfer_fvu_control, a second base SAE on those tokens, is the control of).
TRANSFER_COLUMNS = ("base_on_finetuned", "finetuned_on_finetuned", "finetuned_on_base")


def layer_frame(inputs: ReportInputs) -> pd.DataFrame:
    """Per-layer table [layer × column] from loaded inputs (empty without similarity)."""
    if not inputs.has("similarity"):
        return pd.DataFrame()
    final = inputs.final
    sim = inputs.results["similarity"].sel(reference="base", checkpoint=final)
    frame = sim.transpose("layer", "metric").to_pandas()
    frame.columns = [str(c) for c in frame.columns]
    columns: dict[str, pd.Series] = dict(frame.items())
    res = inputs.results
    if "drift" in res and final in res["drift"].checkpoint:
        drift = res["drift"].sel(checkpoint=final).mean("token", dtype=np.float64)
        columns["drift_mean"] = drift.to_pandas().clip(lower=0.0)  # 1 − cos ≥ 0 up to rounding
    if "probe_accuracy" in res:
        acc = res["probe_accuracy"]
        pooling = "mean" if "mean" in acc.pooling else str(acc.pooling.values[0])
        for name, label in (("base", "base"), ("final", final)):
            if label in acc.checkpoint:
                columns[f"probe_{name}"] = acc.sel(checkpoint=label, pooling=pooling).to_pandas()
        if "probe_control_accuracy" in res and final in acc.checkpoint:
            control = res["probe_control_accuracy"].sel(checkpoint=final, pooling=pooling)
            columns["probe_control_final"] = control.to_pandas()
        if "majority_rate" in res:
            columns["probe_majority"] = pd.Series(float(res["majority_rate"]), index=acc.layer)
    if "sae_metrics" in res:
        sae = res["sae_metrics"]
        for metric in ("fvu", "l0"):
            for name, label in (("base", "base"), ("final", final)):
                if metric in sae.metric and label in sae.checkpoint:
                    series = sae.sel(checkpoint=label, metric=metric).to_pandas()
                    columns[f"sae_{metric}_{name}"] = series
    columns |= _feature_columns(res)
    table = pd.DataFrame(columns).astype("float64")
    table.index = table.index.astype(int)
    table.index.name = "layer"
    return table.reset_index()


def _feature_columns(res: dict) -> dict[str, pd.Series]:
    """The feature stage's per-layer columns (only those whose group is present)."""
    columns: dict[str, pd.Series] = {}
    if "matched_fraction" in res:
        columns["matched_fraction"] = res["matched_fraction"].to_pandas()
    if "matched_fraction_control" in res:
        columns["matched_fraction_control"] = res["matched_fraction_control"].to_pandas()
    if "transfer_fvu" in res:
        fvu = res["transfer_fvu"]
        for direction in TRANSFER_COLUMNS:
            if direction in fvu.direction:
                columns[f"transfer_fvu_{direction}"] = fvu.sel(direction=direction).to_pandas()
    if "transfer_fvu_control" in res:
        columns["transfer_fvu_control"] = res["transfer_fvu_control"].to_pandas()
    if "crosscoder_counts" in res:
        counts = res["crosscoder_counts"].transpose("layer", "group").to_pandas()
        for name in COUNT_COLUMNS:
            group = name.removeprefix("crosscoder_")
            if group in counts:
                columns[name] = counts[group]
        if "finetuned_only" in counts:
            columns["finetuned_only_share"] = counts["finetuned_only"] / counts.sum(axis=1)
    if "relative_norm_deviation" in res:
        columns["relative_norm_deviation"] = res["relative_norm_deviation"].to_pandas()
    if "task_specific_fraction" in res:
        fraction = res["task_specific_fraction"]
        for source in ("base_sae", "finetuned_sae"):
            if source in fraction.source:
                series = fraction.sel(source=source).to_pandas()
                columns[f"task_specific_{source}"] = series
    return columns


def similarity_sentence(cos: pd.Series, threshold: float = HIGH_SIMILARITY) -> str:
    """Describe where the per-layer cosine ``cos`` (index = layer) falls below ``threshold``."""
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
    return f"{head} and falls to {cos.min():.3f} at layer {lowest_layer}."


def summary_lines(inputs: ReportInputs, table: pd.DataFrame) -> list[str]:
    """A few sentences that state the main numbers of the run."""
    lines = []
    metrics = inputs.metrics
    if not metrics.empty and metrics["val_accuracy"].notna().any():
        acc = metrics["val_accuracy"].dropna()
        lines.append(
            f"Fine-tuning took validation accuracy from {acc.iloc[0]:.3f} ({acc.index[0]}) to "
            f"{acc.iloc[-1]:.3f} ({acc.index[-1]})."
        )
    if not table.empty:
        layered = table.set_index("layer")
        lines.append(similarity_sentence(layered["cosine"]))
        floor = _floor(inputs, "linear_cka")
        if floor is not None:
            bounds = _similarity_bounds(inputs, "linear_cka")
            floor_bounds = _similarity_bounds(inputs, "linear_cka", reference="random")
            lines.append(floor_sentence(layered["linear_cka"], floor, bounds, floor_bounds))
        cka = layered["linear_cka"]
        if len(cka) > 1:
            lines.append(cka_drop_sentence(cka, _similarity_bounds(inputs, "linear_cka")))
        if "probe_final" in layered:
            best = int(layered["probe_final"].idxmax())
            base = layered["probe_base"].loc[best] if "probe_base" in layered else np.nan
            line = (
                f"A linear probe on the final checkpoint is most accurate at layer {best} "
                f"({layered['probe_final'].loc[best]:.3f}; base there: {base:.3f})."
            )
            if "probe_control_final" in layered and "probe_majority" in layered:
                line += (
                    f" The same probe on shuffled labels scores "
                    f"{layered['probe_control_final'].loc[best]:.3f} there, and always "
                    f"guessing the majority class {layered['probe_majority'].loc[best]:.3f}."
                )
            lines.append(line)
        if "finetuned_only_share" in layered:
            lines.append(
                finetuned_only_sentence(layered["finetuned_only_share"], _share_bounds(inputs))
            )
        if "matched_fraction_control" in layered and "matched_fraction" in layered:
            lines.append(matching_control_sentence(layered, _matching_bounds(inputs)))
    return lines


def _similarity_bounds(
    inputs: ReportInputs, metric: str, reference: str = "base"
) -> pd.DataFrame | None:
    """(low, high) columns by layer of final vs ``reference`` ``metric`` from
    ``similarity_ci``."""
    ci = inputs.results.get("similarity_ci")
    if ci is None or "final" not in ci.checkpoint or metric not in ci.metric:
        return None
    if reference not in ci.reference:
        return None
    picked = ci.sel(reference=reference, checkpoint="final", metric=metric)
    return picked.transpose("layer", "bound").to_pandas()


def _floor(inputs: ReportInputs, metric: str) -> pd.Series | None:
    """Final's ``metric`` against the random reference by layer (None without one)."""
    sim = inputs.results["similarity"]
    if "random" not in sim.reference or inputs.final not in sim.checkpoint:
        return None
    floor = sim.sel(reference="random", checkpoint=inputs.final, metric=metric).to_pandas()
    floor.index = floor.index.astype(int)
    return floor


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


def _share_bounds(inputs: ReportInputs, group: str = "finetuned_only") -> pd.DataFrame | None:
    """(low, high) by layer of a crosscoder group's share of live latents."""
    ci = inputs.results.get("crosscoder_share_ci")
    if ci is None or group not in ci.group:
        return None
    return ci.sel(group=group).transpose("layer", "bound").to_pandas()


def _matching_bounds(inputs: ReportInputs) -> pd.DataFrame | None:
    """Columns ``low``, ``high``, ``control_low``, ``control_high`` by layer: the intervals
    of ``matched_fraction`` and ``matched_fraction_control`` (None without them)."""
    res = inputs.results
    if "matched_fraction_ci" not in res or "matched_fraction_control_ci" not in res:
        return None
    own = res["matched_fraction_ci"].transpose("layer", "bound").to_pandas()
    control = res["matched_fraction_control_ci"].transpose("layer", "bound").to_pandas()
    return own.join(control.add_prefix("control_"))


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
