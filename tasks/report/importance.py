"""The report's recommendation: which layers to fine-tune, with the reversion evidence.

Reads ``layer_reversion``, ``freeze_grid`` (when the run has one), ``drift_importance``
(and in a run of several tasks ``task_drift_importance``) and ``similarity``; the
recommendation itself is :func:`tasks.importance.recommend`'s. One figure
puts the reversion curves, the freeze curve (accuracy with layers 0 … k frozen, at k) and the
similarity curves on one layer axis (the head as the last tick).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr

from layerdrift.tasks.importance import NONE, POOLED, Recommendation, recommend
from layerdrift.tasks.importance.recommend import FREEZE_GRID
from layerdrift.tasks.report.figures import LAYER_AXIS, Plot, outside_legend
from layerdrift.tasks.report.load import ReportInputs

FIGURE_NAME = "09-layer-importance"
CURVES = {
    "revert": "final with this unit reverted",
    "transplant": "base with only this unit fine-tuned",
    "revert_from": "final with this unit and later reverted",
    "revert_through": "final with this unit and earlier reverted",
}
EVIDENCE_WORDS = {
    "transplant": "base with only that unit fine-tuned",
    "revert_from": "base with the units up to it fine-tuned (the rest reverted)",
    "revert_through": "base with the units after it fine-tuned (the rest reverted)",
    "final": "no smaller set recovers enough: fine-tune every unit",
}
FREEZE_LABEL = "fine-tuned with layers 0 … k frozen (freeze grid)"


def reversion_frame(inputs: ReportInputs) -> pd.DataFrame:
    """Validation accuracy per unit (rows, named) and variant (columns)."""
    accuracy = inputs.results["layer_reversion"].sel(quantity="accuracy")
    frame = accuracy.transpose("layer", "variant").to_pandas()
    frame.index = [str(u) for u in accuracy["unit"].values]
    frame.index.name = "unit"
    frame.columns = [str(c) for c in frame.columns]
    return frame


def freeze_frame(inputs: ReportInputs) -> pd.DataFrame:
    """The freeze grid: one row per k (``none``: the run's own fine-tune), its quantities."""
    grid = inputs.results["freeze_grid"]
    frame = grid.transpose("freeze_k", "quantity").to_pandas()
    frame.index = [f"{k} (full fine-tune)" if k == NONE else str(k) for k in frame.index]
    frame.index.name = "layers 0 … k frozen"
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _frozen_rows(grid: xr.DataArray) -> xr.DataArray:
    """The freeze grid's rows with layers frozen (without the run's own fine-tune)."""
    return grid.isel(freeze_k=np.flatnonzero(grid["frozen_through"].values >= 0))


def _freeze_curve(inputs: ReportInputs, axis) -> None:
    """Accuracy with layers 0 … k frozen, at k (the freeze grid's own rows, not ``none``)."""
    if not inputs.has("freeze_grid"):
        return
    frozen = _frozen_rows(inputs.results["freeze_grid"])
    axis.plot(frozen["frozen_through"].values, frozen.sel(quantity="accuracy").values,
              marker="D", linestyle="--", color="black", label=FREEZE_LABEL)  # fmt: skip


def fig_importance(inputs: ReportInputs) -> Plot | None:
    """Reversion and freeze accuracy (top) and similarity of final to base (bottom) against
    the layer."""
    if not inputs.has("layer_reversion"):
        return None
    reversion = inputs.results["layer_reversion"].sel(quantity="accuracy")
    layers = [int(v) for v in reversion.layer.values]
    units = [str(u) for u in reversion["unit"].values]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9.0, 6.0), sharex=True)
    palette = sns.color_palette(n_colors=len(CURVES))
    for color, (variant, label) in zip(palette, CURVES.items(), strict=True):
        top.plot(layers, reversion.sel(variant=variant).values, marker="o", color=color,
                 label=label)  # fmt: skip
    _freeze_curve(inputs, top)
    for variant, style in (("final", "-"), ("base", ":")):
        value = float(reversion.sel(variant=variant).isel(layer=0))
        label = f"{variant} {value:.3f}"
        top.axhline(value, color="0.3", linestyle=style, linewidth=1, label=label)
    top.set_ylabel("validation accuracy")
    top.legend()
    outside_legend(top)
    if inputs.has("similarity"):
        sim = inputs.results["similarity"].sel(reference="base", checkpoint=final_label(inputs))
        for metric in ("cosine", "linear_cka"):
            bottom.plot(sim.layer.values, sim.sel(metric=metric).values, marker="s", label=metric)
        bottom.legend()
        outside_legend(bottom)
    bottom.set_ylabel("similarity of final to base")
    bottom.set_xticks(layers, [str(v) for v in layers[:-1]] + [units[-1]])
    bottom.set_xlabel(f"{LAYER_AXIS}; the classification head last")
    fig.tight_layout()
    revert = reversion.sel(variant="revert").isel(layer=slice(0, -1))
    worst = int(revert.idxmin("layer"))
    reading = (
        f"Reverting {units[layers.index(worst)]} alone costs the most accuracy "
        f"({float(reversion.sel(variant='final').isel(layer=0)):.3f} → "
        f"{float(revert.min()):.3f}) among the layers."
    )
    title = "Which layers matter: reversion, freezing and similarity"
    return Plot(FIGURE_NAME, title, fig, reading)


def recommendation_lines(inputs: ReportInputs) -> list[str]:
    """The recommendation and the drift-importance correlation, as sentences."""
    lines = _recommendation(inputs)
    final = final_label(inputs)
    if final != "final":
        lines.insert(0, f"The reversion study here is {final}'s, on its task's validation "
                        "split against its own base; every task's correlation is in the table "
                        "below.")  # fmt: skip
    if inputs.has("drift_importance"):
        lines.append(
            "Does drift predict importance? Spearman rank correlation over layers between "
            f"drift and the accuracy lost by reverting the layer — "
            f"{_rho_words(inputs.results['drift_importance'])}."
        )
    if inputs.has("task_drift_importance"):
        pooled = inputs.results["task_drift_importance"].sel(checkpoint=POOLED)
        lines.append(
            f"Across tasks, over every (task final, layer) point pooled: {_rho_words(pooled)}."
        )
    return lines


# How each drift measure reads in a sentence.
MEASURE_WORDS = {
    "linear_cka": "1 − linear CKA",
    "cosine": "1 − cosine",
    "transfer_fvu": "base SAE's FVU on the fine-tuned tokens",
}


def _rho_words(rho: xr.DataArray) -> str:
    """``1 − linear CKA: 0.40, …`` for the measures with a value; NaN ones said so."""
    words = []
    for measure in rho.measure.values:
        value = float(rho.sel(measure=measure))
        name = MEASURE_WORDS.get(str(measure), str(measure))
        words.append(f"{name}: too few layers or nothing to rank" if np.isnan(value)
                     else f"{name}: {value:.2f}")  # fmt: skip
    return ", ".join(words)


def final_label(inputs: ReportInputs) -> str:
    """The checkpoint ``layer_reversion`` reverts (``final``, or a task final in a study)."""
    return str(inputs.results["layer_reversion"].attrs.get("final", "final"))


def task_drift_frame(inputs: ReportInputs) -> pd.DataFrame:
    """Spearman rho per task final (and ``pooled``) and measure: rows × measures."""
    table = inputs.results["task_drift_importance"]
    frame = table.transpose("checkpoint", "measure").to_pandas()
    frame.columns = [MEASURE_WORDS.get(str(c), str(c)) for c in frame.columns]
    frame.index = [str(v) for v in frame.index]
    frame.index.name = "task final"
    return frame


def _recommendation(inputs: ReportInputs) -> list[str]:
    """The smallest set of layers worth fine-tuning, and where that comes from."""
    grid = inputs.results.get("freeze_grid")
    found = recommend(inputs.results["layer_reversion"], freeze_grid=grid)
    if found is None:
        return ["Fine-tuning did not raise validation accuracy, so there is no gain to recover."]
    pct = f"{found.target:.0%}"
    return [
        f"Fine-tune {', '.join(found.units)} and keep the rest at base: that model reaches "
        f"validation accuracy {found.accuracy:.3f}, "
        f"{found.recovered:.1%} of the gain from base ({found.base_accuracy:.3f}) to full "
        f"fine-tuning ({found.final_accuracy:.3f}); the smallest set found to recover ≥ {pct}.",
        _evidence(found, grid),
    ]


def _evidence(found: Recommendation, grid: xr.DataArray | None) -> str:
    """Where the recommendation comes from, as a sentence."""
    if found.evidence == FREEZE_GRID:
        rows = _frozen_rows(grid).sel(quantity="accuracy")
        pairs = zip(rows["frozen_through"].values, rows.values, strict=True)
        ks = ", ".join(f"k = {int(k)}: {float(a):.3f}" for k, a in pairs)
        return (
            "Evidence: from the freeze grid — the task fine-tuned again with layers 0 … k "
            f"frozen, validation accuracy {ks}; the largest k recovering ≥ {found.target:.0%} "
            "of the gain decides (every unit when none does)."
        )
    return (
        "Evidence: the layer-reversion curves (weights swapped in memory, one validation pass "
        f"each; no freeze grid in this run), variant {found.evidence}: "
        f"{EVIDENCE_WORDS[found.evidence]}. Sets tried: every single unit, the first k units "
        "and the last k units."
    )
