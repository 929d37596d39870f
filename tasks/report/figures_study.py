"""The report's figure of a run of several tasks: each task against base, and task against task.

Left: linear CKA of each task's final checkpoint to ``base`` per layer (the reference study's
overlay of each task's curve); a task fine-tuned with several seeds is drawn as the mean of
its seeds with their range as a band, so the band's width is how much of the change is the
seed. Right: the ``cross_similarity`` of every two task finals per layer (solid: two tasks,
dashed: one task with two methods, dotted: one task with two seeds), with its bootstrap
band when the run has intervals.

Figure 11 (:func:`fig_task_features`) compares features the same way: for each task final
against base, the share of fine-tuned SAE latents matched in the base SAE and the FVU of
the fine-tuned SAE on base activations, each beside the control (a second base SAE: what
"no change" reads at this budget).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from layerdrift.tasks.report.figures import LAYER_AXIS, Plot, integer_layers, outside_legend
from layerdrift.tasks.report.load import ReportInputs

FIGURE_NAME = "10-tasks"
FEATURES_FIGURE_NAME = "11-task-features"
FEATURE_PANELS = (
    ("matched_fraction", "matched_fraction_control", "matched SAE latents (share)"),
    ("transfer_fvu_finetuned_on_base", "transfer_fvu_control", "fine-tuned SAE on base (FVU)"),
)
METRIC = "linear_cka"
KIND_STYLES = {"task": "-", "method": "--", "seed": ":"}


def task_curves(similarity: xr.DataArray) -> dict[str, pd.DataFrame]:
    """Per task, its finals' similarity to base by layer: frame [layer × seed] (one column
    per seed); needs the ``task`` and ``seed`` coordinates of a run of several tasks."""
    finals = [str(c) for c in similarity.checkpoint.values if str(c).endswith("/final")]
    rows = similarity.sel(reference="base", metric=METRIC, checkpoint=finals)
    out: dict[str, pd.DataFrame] = {}
    for label in finals:
        row = rows.sel(checkpoint=label)
        task, seed = str(row["task"].values), int(row["seed"].values)
        frame = out.setdefault(task, pd.DataFrame(index=rows["layer"].values))
        frame[seed] = row.values
    return out


def seed_spread(curves: dict[str, pd.DataFrame]) -> dict[str, pd.Series]:
    """Per task with several seeds: the range (max − min) of its similarity to base across
    seeds, by layer."""
    return {
        task: frame.max(axis=1) - frame.min(axis=1)
        for task, frame in curves.items()
        if frame.shape[1] > 1
    }


def fig_tasks(inputs: ReportInputs) -> Plot | None:
    """Figure 10: each task's final vs base, and every two tasks' finals, by layer."""
    if not inputs.has("similarity", "cross_similarity"):
        return None
    sim, cross = inputs.results["similarity"], inputs.results["cross_similarity"]
    if "task" not in sim.coords:
        return None
    curves = task_curves(sim)
    fig, (own, pairs) = plt.subplots(1, 2, figsize=(12.0, 4.2), sharey=True)
    for task, frame in curves.items():
        mean = frame.mean(axis=1)
        label = task if frame.shape[1] == 1 else f"{task} (mean of {frame.shape[1]} seeds)"
        (line,) = own.plot(mean.index, mean.values, marker="o", label=label)
        if frame.shape[1] > 1:
            own.fill_between(mean.index, frame.min(axis=1), frame.max(axis=1),
                             color=line.get_color(), alpha=0.2)  # fmt: skip
    own.set(xlabel=LAYER_AXIS, ylabel="linear CKA", title="each task's final vs base")
    own.legend(fontsize=8)
    bands = inputs.results.get("cross_similarity_ci")
    for name in cross.pair.values:
        row = cross.sel(pair=name, metric=METRIC)
        kind = str(row["kind"].values)
        label = f"{row['first'].values} vs {row['second'].values} ({kind})"
        (line,) = pairs.plot(row.layer.values, row.values, marker="o",
                             linestyle=KIND_STYLES.get(kind, "-"), label=label)  # fmt: skip
        if bands is not None:
            band = bands.sel(pair=name, metric=METRIC)
            pairs.fill_between(band.layer.values, band.sel(bound="low"), band.sel(bound="high"),
                               color=line.get_color(), alpha=0.15)  # fmt: skip
    pairs.set(xlabel=LAYER_AXIS, title="task finals against each other")
    pairs.legend(fontsize=7)
    outside_legend(pairs, fontsize=7)
    for ax in (own, pairs):
        integer_layers(ax, cross.layer.values)
    fig.tight_layout()
    return Plot(FIGURE_NAME, "Tasks against base and against each other, by layer", fig,
                tasks_reading(curves, cross))  # fmt: skip


def tasks_reading(curves: dict[str, pd.DataFrame], cross: xr.DataArray) -> str:
    """The figure's reading at the last layer: each task vs base, the closest and farthest
    pair, and the seed spread where there are seeds."""
    last = int(cross.layer.values[-1])
    own = ", ".join(f"{task} {frame.mean(axis=1).loc[last]:.3f}" for task, frame in curves.items())
    values = cross.sel(metric=METRIC, layer=last)
    order = np.argsort(values.values)
    far, near = values.isel(pair=order[0]), values.isel(pair=order[-1])
    text = (
        f"At layer {last}, linear CKA to base is {own}. Between finals it runs from "
        f"{float(far):.3f} ({far['first'].values} vs {far['second'].values}, {far['kind'].values}) "
        f"to {float(near):.3f} ({near['first'].values} vs {near['second'].values}, "
        f"{near['kind'].values})."
    )
    spread = seed_spread(curves)
    if spread:
        text += " Range across seeds: " + ", ".join(
            f"{task} {series.loc[last]:.3f}" for task, series in spread.items()
        )
        text += f" at layer {last} (the band)."
    return text


def fig_task_features(inputs: ReportInputs) -> Plot | None:
    """Figure 11: each task final's features against base, beside the control, by layer."""
    if not inputs.has("task_features"):
        return None
    table = inputs.results["task_features"]
    fig, axes = plt.subplots(1, len(FEATURE_PANELS), figsize=(12.0, 4.0))
    for ax, (quantity, control, title) in zip(axes, FEATURE_PANELS, strict=True):
        for label in table.checkpoint.values:
            row = table.sel(checkpoint=label, quantity=quantity)
            ax.plot(row.layer.values, row.values, marker="o", label=str(label))
        floor = table.sel(quantity=control).isel(checkpoint=0)  # one control SAE for all
        ax.plot(floor.layer.values, floor.values, color="grey", linestyle="--",
                label="control (second base SAE)")  # fmt: skip
        ax.set(xlabel=LAYER_AXIS, title=title)
        integer_layers(ax, table.layer.values)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return Plot(FEATURES_FIGURE_NAME, "Features of each task against base, by layer", fig,
                task_features_reading(table))  # fmt: skip


def task_features_reading(table: xr.DataArray) -> str:
    """The figure's reading at the last layer compared: each task's transfer FVU and
    matched share, and the control's."""
    last = int(table.layer.values[-1])
    at = table.sel(layer=last)
    fvu = ", ".join(
        f"{label} {float(at.sel(checkpoint=label, quantity='transfer_fvu_finetuned_on_base')):.3f}"
        for label in at.checkpoint.values
    )
    control = float(at.sel(quantity="transfer_fvu_control").isel(checkpoint=0))
    matched = ", ".join(
        f"{label} {float(at.sel(checkpoint=label, quantity='matched_fraction')):.3f}"
        for label in at.checkpoint.values
    )
    share = float(at.sel(quantity="matched_fraction_control").isel(checkpoint=0))
    return (
        f"At layer {last}, each task's fine-tuned SAE reconstructs base activations with FVU "
        f"{fvu} (control {control:.3f}: higher than the control means the features moved); "
        f"matched shares {matched} (control {share:.3f})."
    )
