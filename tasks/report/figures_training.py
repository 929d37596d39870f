"""The report's figures 6–8: SAE metrics, feature composition, fine-tuning curves.

Same conventions as :mod:`tasks.report.figures`: each function returns a
:class:`~tasks.report.figures.Plot` or None when its input is missing.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from layerdrift.tasks.report.figures import (
    LAYER_AXIS,
    Plot,
    integer_layers,
    ordered,
    outside_legend,
)
from layerdrift.tasks.report.load import ReportInputs

SAE_PANELS = ("fvu", "l0", "dead_fraction", "accuracy_recovered")
GROUP_COLOURS = {"base_only": "#4477aa", "shared": "#bbbbbb", "finetuned_only": "#ee6677"}


def fig_sae(inputs: ReportInputs) -> Plot | None:
    """Figure 6: SAE FVU, L0, dead fraction and accuracy recovered by layer, per checkpoint."""
    if not inputs.has("sae_metrics"):
        return None
    sae = inputs.results["sae_metrics"]
    panels = [m for m in SAE_PANELS if m in sae.metric]
    labels = ordered(sae.checkpoint.values)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        frame = sae.sel(metric=metric).to_dataframe(name=metric).reset_index()
        frame["checkpoint"] = pd.Categorical(frame["checkpoint"], labels)
        sns.lineplot(frame, x="layer", y=metric, hue="checkpoint", marker="o", errorbar=None, ax=ax)
        ax.set(title=metric.replace("_", " "), xlabel="layer", ylabel="")
        integer_layers(ax, sae.layer.values)
        if ax is not axes[0, -1] and ax.get_legend() is not None:
            ax.get_legend().remove()
    outside_legend(axes[0, -1])
    fig.tight_layout()
    reading = "SAE quality per layer."
    if "fvu" in sae.metric:
        fvu = sae.sel(metric="fvu")
        worst = fvu.where(fvu == fvu.max(), drop=True)
        reading = (
            f"FVU ranges {float(fvu.min()):.3f}–{float(fvu.max()):.3f}; the hardest layer to "
            f"reconstruct is {int(worst.layer.values[0])} ({worst.checkpoint.values[0]})."
        )
    return Plot("06-sae-metrics", "Sparse autoencoders by layer", fig, reading)


def _transfer_panel(ax: plt.Axes, results: dict) -> None:
    """Each SAE's FVU on each model's tokens by layer, the control SAE's dotted, and their
    95% intervals over held-out examples as bands where the run has them."""
    data = results["transfer_fvu"]
    directions = [str(d) for d in data["direction"].values]
    palette = dict(zip(directions, sns.color_palette(n_colors=len(directions)), strict=True))
    frame = data.to_dataframe(name="fvu").reset_index()
    sns.lineplot(
        frame, x="layer", y="fvu", hue="direction", marker="o", errorbar=None, palette=palette,
        ax=ax,
    )  # fmt: skip
    if "transfer_fvu_ci" in results:
        ci = results["transfer_fvu_ci"]
        for direction in directions:
            band = ci.sel(direction=direction).transpose("layer", "bound").to_pandas()
            ax.fill_between(band.index, band["low"], band["high"], color=palette[direction],
                            alpha=0.2, linewidth=0)  # fmt: skip
    if "transfer_fvu_control" in results:
        control = results["transfer_fvu_control"].to_pandas()
        label = "control: 2nd base SAE on base"
        ax.plot(control.index, control.values, "k:", marker="x", label=label)
        if "transfer_fvu_control_ci" in results:
            band = results["transfer_fvu_control_ci"].transpose("layer", "bound").to_pandas()
            ax.fill_between(band.index, band["low"], band["high"], color="k", alpha=0.1,
                            linewidth=0)  # fmt: skip
        ax.legend()  # rebuilt, so the control joins seaborn's entries
    ax.set(title="SAE transfer FVU (other model's tokens)", ylim=(0, None))
    outside_legend(ax, fontsize=7)


def fig_features(inputs: ReportInputs) -> Plot | None:
    """Figure 7: crosscoder groups, matched fraction and task-specific fraction by layer."""
    names = ("crosscoder_counts", "matched_fraction", "task_specific_fraction", "transfer_fvu")
    present = [n for n in names if n in inputs.results]
    if not present:
        return None
    ncols = min(2, len(present))
    nrows = -(-len(present) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.axis("off")
    parts = []
    for ax, name in zip(axes.flat, present, strict=False):
        data = inputs.results[name]
        if name == "crosscoder_counts":
            frame = data.transpose("layer", "group").to_pandas()
            share = frame.div(frame.sum(axis=1), axis=0)
            groups = [g for g in GROUP_COLOURS if g in share.columns]
            share[groups].plot.bar(
                stacked=True, ax=ax, color=[GROUP_COLOURS[g] for g in groups], width=0.8, rot=0
            )
            ax.set(title="crosscoder latents", xlabel="layer", ylabel="share of live latents")
            ax.legend()
            outside_legend(ax, fontsize=7)
            if "finetuned_only" in share:
                top = share["finetuned_only"].fillna(0.0)
                parts.append(
                    f"fine-tuned-only latents peak at layer {int(top.idxmax())} ({top.max():.1%})"
                    if top.max() > 0
                    else "no crosscoder latent is fine-tuned-only at any layer"
                )
        elif name == "matched_fraction":
            series = data.to_pandas()
            ax.plot(series.index, series.values, marker="o", label="SAE latents matched")
            for ci_name in ("matched_fraction_ci", "matched_fraction_control_ci"):
                if ci_name in inputs.results:  # 95% over resampled latents
                    band = inputs.results[ci_name].transpose("layer", "bound").to_pandas()
                    ax.fill_between(band.index, band["low"], band["high"], alpha=0.2)
            ax.set(title="base↔final: SAE matches, crosscoder lean", ylim=(0, 1.05))
            parts.append(
                f"matched fraction is lowest at layer {int(series.idxmin())} ({series.min():.1%})"
                if series.min() < 1
                else "no final-SAE latent is unmatched at any layer"
            )
            if "matched_fraction_control" in inputs.results:
                control = inputs.results["matched_fraction_control"].to_pandas()
                label = "control: 2nd base SAE (another seed)"
                ax.plot(control.index, control.values, marker="x", linestyle=":", label=label)
                ax.legend(fontsize=7, loc="center left")
            if "relative_norm_deviation" in inputs.results:
                lean = inputs.results["relative_norm_deviation"].to_pandas()
                label = "crosscoder lean 2·|r − ½|"
                ax.plot(lean.index, lean.values, marker="s", linestyle="--", label=label)
                ax.legend(fontsize=7, loc="center left")  # matched starts high, lean low
        elif name == "transfer_fvu":
            _transfer_panel(ax, inputs.results)
        else:
            frame = data.to_dataframe(name="fraction").reset_index()
            sns.lineplot(
                frame, x="layer", y="fraction", hue="source", marker="o", errorbar=None, ax=ax
            )
            ax.set(title="task-specific latents (AUROC)", xlabel="layer", ylim=(0, None))
            outside_legend(ax, fontsize=7)
        if name != "crosscoder_counts":  # bars sit at positions 0..n-1, labelled already
            integer_layers(ax, data.layer.values)
        ax.set_xlabel(LAYER_AXIS)
    fig.tight_layout()
    reading = ("; ".join(parts) or "Feature composition by layer") + "."
    return Plot(
        "07-feature-composition",
        "Feature composition by layer",
        fig,
        reading[0].upper() + reading[1:],
    )


def training_series(
    metrics: pd.DataFrame, series_bases: dict[str, dict] | None = None
) -> dict[str, pd.DataFrame]:
    """The metrics rows of each fine-tune: one series (``""``) for a run of one task; in a
    run of several tasks, each task's rows (``topic/…``) after its own evaluation of base
    (``series_bases[prefix]``, labelled ``<prefix>/base``: its data, its head), or after
    the shared ``base`` row when the series has none."""
    prefixes = [label.rsplit("/", 1)[0] if "/" in label else "" for label in metrics.index]
    named = list(dict.fromkeys(p for p in prefixes if p))
    if not named:
        return {"": metrics}
    bases = series_bases or {}
    shared = metrics.loc[[label for label, p in zip(metrics.index, prefixes, strict=True) if not p]]
    out = {}
    for name in named:
        own = metrics.loc[[m for m, p in zip(metrics.index, prefixes, strict=True) if p == name]]
        start = shared
        if name in bases:
            row = pd.DataFrame([bases[name]], index=[f"{name}/base"], columns=metrics.columns)
            start = row.astype("float64")
        out[name] = pd.concat([start, own])
    return out


def fig_training(inputs: ReportInputs) -> Plot | None:
    """Figure 8: training and validation loss, and validation accuracy, per checkpoint (one
    line per fine-tune in a run of several tasks)."""
    metrics = inputs.metrics
    if metrics.empty:
        return None
    series = training_series(metrics, inputs.series_bases)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for name, rows in series.items():
        for column, style in (("train_loss", "o-"), ("val_loss", "s--")):
            points = rows[column].dropna()
            if not points.empty:
                label = f"{name} {column}".strip()
                loss_ax.plot(rows.loc[points.index, "step"], points, style, label=label)
        acc_ax.plot(rows["step"], rows["val_accuracy"], "o-", label=name or None,
                    color="#228833" if not name else None)  # fmt: skip
    if len(series) == 1:
        for label, row in metrics.iterrows():
            acc_ax.annotate(str(label), (row["step"], row["val_accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, -10))  # fmt: skip
    else:
        acc_ax.legend(fontsize=7)
    loss_ax.set(title="loss", xlabel="training step", ylabel="cross-entropy")
    loss_ax.legend(fontsize=7 if len(series) > 1 else 8)
    acc_ax.set(title="validation accuracy", xlabel="training step", ylabel="accuracy")
    fig.tight_layout()
    parts = []
    for name, rows in series.items():
        acc = rows["val_accuracy"]
        parts.append(
            f"{name + ': ' if name else ''}from {acc.iloc[0]:.3f} ({acc.index[0]}) to "
            f"{acc.iloc[-1]:.3f} ({acc.index[-1]}) over {int(rows['step'].iloc[-1])} steps"
        )
    reading = "Validation accuracy goes " + "; ".join(parts) + "."
    return Plot("08-finetuning-curves", "Fine-tuning curves", fig, reading)
