"""The per-layer summary table and the short summary, both derived from results.zarr.

The table has one row per layer: every similarity of the final checkpoint to base, the mean
per-token drift, probe accuracy of base and final with the final probe's control-task
accuracy and the majority-class rate, SAE FVU and L0 of base and final, and the
feature comparison (matched fraction, transfer FVUs, crosscoder groups and lean,
task-specific fractions), each column present only when its stage ran. The summary's
sentences (:mod:`.claims`) get the intervals and controls that each claim must clear.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerdrift.tasks.report.claims import (
    cka_drop_sentence,
    finetuned_only_sentence,
    floor_sentence,
    matching_control_sentence,
    probe_sentence,
    similarity_sentence,
    transfer_sentence,
)
from layerdrift.tasks.report.load import ReportInputs

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
        lines.append(
            similarity_sentence(layered["cosine"], bounds=_similarity_bounds(inputs, "cosine"))
        )
        floor = _floor(inputs, "linear_cka")
        if floor is not None:
            bounds = _similarity_bounds(inputs, "linear_cka")
            floor_bounds = _similarity_bounds(inputs, "linear_cka", reference="random")
            lines.append(floor_sentence(layered["linear_cka"], floor, bounds, floor_bounds))
        cka = layered["linear_cka"]
        if len(cka) > 1:
            lines.append(cka_drop_sentence(cka, _similarity_bounds(inputs, "linear_cka")))
        if "probe_final" in layered:
            lines.append(probe_sentence(layered))
        if "finetuned_only_share" in layered:
            lines.append(
                finetuned_only_sentence(layered["finetuned_only_share"], _share_bounds(inputs))
            )
        if "matched_fraction_control" in layered and "matched_fraction" in layered:
            lines.append(matching_control_sentence(layered, _matching_bounds(inputs)))
        if {"transfer_fvu_finetuned_on_base", "transfer_fvu_control"} <= set(layered):
            lines.append(transfer_sentence(layered, _transfer_bounds(inputs)))
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


def _transfer_bounds(inputs: ReportInputs) -> pd.DataFrame | None:
    """Columns ``low``, ``high``, ``control_low``, ``control_high`` by layer: the intervals
    of ``transfer_fvu`` finetuned_on_base and of ``transfer_fvu_control`` (None without)."""
    res = inputs.results
    if "transfer_fvu_ci" not in res or "transfer_fvu_control_ci" not in res:
        return None
    own = res["transfer_fvu_ci"].sel(direction="finetuned_on_base")
    own = own.transpose("layer", "bound").to_pandas()
    control = res["transfer_fvu_control_ci"].transpose("layer", "bound").to_pandas()
    return own.join(control.add_prefix("control_"))
