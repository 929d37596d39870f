"""The report's figures 1–3 and 5: similarity by layer, its evolution, layer × layer, probes.

Each ``fig_*`` function takes :class:`~tasks.report.load.ReportInputs` and returns a
:class:`Plot` (a matplotlib figure plus a one-line reading derived from the numbers), or
None when its input is missing. Figures are drawn with seaborn on the Agg backend and saved
as PNG without timestamps, so the same numbers give byte-identical files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from layerdrift.tasks.report.load import ReportInputs, checkpoint_order  # noqa: E402

SIMILARITY_CURVES = ("cosine", "linear_cka", "debiased_cka", "svcca", "pwcca", "procrustes")
LAYER_AXIS = "layer (0 = embeddings)"
FLOOR = 1e-5  # smallest 1 − similarity drawn on a log axis
DPI = 100


@dataclass
class Plot:
    """One drawn figure: file stem, title, the figure and its one-line reading."""

    name: str
    title: str
    figure: plt.Figure
    reading: str


def theme() -> None:
    """Fix the plotting style so every run draws the same pixels."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update({"svg.hashsalt": "layerdrift", "figure.dpi": DPI, "font.size": 10})


def outside_legend(ax: plt.Axes, fontsize: int = 8) -> None:
    """Move the axes' legend outside, to the right, so it never hides data."""
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize)


def integer_layers(ax: plt.Axes, layers) -> None:
    """Tick every layer (integers) on the x axis."""
    ax.set_xticks(sorted(int(v) for v in layers))


def png_bytes(figure: plt.Figure) -> bytes:
    """Render ``figure`` to PNG bytes with no creation metadata, and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def ordered(labels) -> list[str]:
    """Checkpoint labels in training order."""
    return sorted((str(label) for label in labels), key=checkpoint_order)


def final_vs_base(inputs: ReportInputs) -> pd.DataFrame:
    """Similarity of ``final`` to ``base`` per layer: frame [layer × metric]."""
    sim = inputs.results["similarity"].sel(reference="base", checkpoint=inputs.final)
    frame = sim.transpose("layer", "metric").to_pandas()
    frame.columns = [str(c) for c in frame.columns]
    return frame


def fig_similarity(inputs: ReportInputs) -> Plot | None:
    """Figure 1: the paper's figure, every similarity of final vs base against the layer."""
    if not inputs.has("similarity"):
        return None
    frame = final_vs_base(inputs)
    curves = frame[[m for m in SIMILARITY_CURVES if m in frame.columns]].copy()
    if "procrustes" in curves:
        curves["procrustes"] = 1.0 - curves["procrustes"] / 2.0
        curves = curves.rename(columns={"procrustes": "procrustes (1 − d/2)"})
    long = curves.reset_index().melt(id_vars="layer", var_name="metric", value_name="similarity")
    long["dissimilarity"] = (1.0 - long["similarity"]).clip(lower=FLOOR)
    palette = dict(
        zip(curves.columns, sns.color_palette(n_colors=len(curves.columns)), strict=True)
    )
    fig, (lin, log) = plt.subplots(1, 2, figsize=(11.5, 4.0))
    for ax, column in ((lin, "similarity"), (log, "dissimilarity")):
        sns.lineplot(
            long,
            x="layer",
            y=column,
            hue="metric",
            style="metric",
            markers=True,
            dashes=False,
            errorbar=None,
            palette=palette,
            ax=ax,
        )
        integer_layers(ax, frame.index)
        ax.set_xlabel(LAYER_AXIS)
    bands, floors = _draw_bands_and_floors(inputs, lin, log, palette)
    low = min([float(long["similarity"].min())] + [float(f.min()) for f in floors.values()])
    lin.set(
        ylabel="similarity of final to base", ylim=(max(0.0, low - 0.1 * (1 - low) - 0.01), 1.005)
    )
    log.set(yscale="log", ylabel=f"1 − similarity (log; floor {FLOOR:g})")
    lin.get_legend().remove()
    outside_legend(log)
    fig.tight_layout()
    cos = frame["cosine"]
    reading = (
        f"Mean per-token cosine of final to base is {cos.iloc[0]:.3f} at the embeddings and "
        f"{cos.iloc[-1]:.3f} at layer {int(cos.index[-1])}; linear CKA ends at "
        f"{frame['linear_cka'].iloc[-1]:.3f}."
    )
    if bands:
        ci = inputs.results["similarity_ci"]
        reading += (
            f" Bands: {100 * ci.attrs.get('level', 0.95):.0f}% bootstrap intervals over "
            f"probe examples ({ci.attrs.get('resamples')} resamples of "
            f"{ci.attrs.get('groups')} example groups)."
        )
    if floors:
        reading += (
            " Dashed: the same metric of final against a seeded random initialisation of "
            "the architecture on the same tokens, the floor of what similarity means here."
        )
    return Plot("01-similarity-by-layer", "Similarity of final to base, by layer", fig, reading)


def floor_curves(inputs: ReportInputs) -> dict[str, pd.Series]:
    """Per curve of figure 1, final's similarity to the random reference by layer, on the
    curves' scale (Procrustes as 1 − d/2); empty when the run has no random reference."""
    sim = inputs.results["similarity"]
    if "random" not in sim.reference:
        return {}
    floor = sim.sel(reference="random", checkpoint=inputs.final)
    curves = {}
    for metric in SIMILARITY_CURVES:
        if metric not in floor.metric:
            continue
        values = floor.sel(metric=metric).to_pandas()
        if metric == "procrustes":
            values, metric = 1.0 - values / 2.0, "procrustes (1 − d/2)"
        curves[metric] = values
    return curves


def _draw_bands_and_floors(
    inputs: ReportInputs, lin: plt.Axes, log: plt.Axes, palette: dict
) -> tuple[dict, dict]:
    """Figure 1's interval bands and dashed random-reference floors on both axes (``log``
    shows 1 − similarity); returns them (:func:`interval_bands`, :func:`floor_curves`)."""
    bands = interval_bands(inputs)
    for metric, (low, high) in bands.items():
        color = palette[metric]
        lin.fill_between(low.index, low, high, color=color, alpha=0.2, linewidth=0)
        log.fill_between(
            low.index, (1 - high).clip(lower=FLOOR), (1 - low).clip(lower=FLOOR),
            color=color, alpha=0.2, linewidth=0,
        )  # fmt: skip
    floors = floor_curves(inputs)
    for metric, floor in floors.items():
        color = palette[metric]
        lin.plot(floor.index, floor, color=color, linestyle="--", linewidth=1.0, alpha=0.8)
        log.plot(floor.index, (1 - floor).clip(lower=FLOOR), color=color, linestyle="--",
                 linewidth=1.0, alpha=0.8)  # fmt: skip
    if floors:
        log.plot([], [], color="0.4", linestyle="--", label="dashed: vs random init")
        log.legend(title="metric")  # again, with the floor's entry
    return bands, floors


def interval_bands(inputs: ReportInputs) -> dict[str, tuple[pd.Series, pd.Series]]:
    """Per curve of figure 1, the (low, high) bounds by layer from ``similarity_ci``, on the
    curves' scale (Procrustes as 1 − d/2); empty when the run has no intervals."""
    if not inputs.has("similarity_ci"):
        return {}
    ci = inputs.results["similarity_ci"].sel(reference="base", checkpoint=inputs.final)
    bands = {}
    for metric in SIMILARITY_CURVES:
        if metric not in ci.metric:
            continue
        low, high = (ci.sel(metric=metric, bound=b).to_pandas() for b in ("low", "high"))
        if metric == "procrustes":  # a distance: 1 − d/2 turns it and swaps the bounds
            low, high = 1.0 - high / 2.0, 1.0 - low / 2.0
            metric = "procrustes (1 − d/2)"
        bands[metric] = (low, high)
    return bands


def fig_evolution(inputs: ReportInputs) -> Plot | None:
    """Figure 2: checkpoint × layer heatmaps against base and against the previous checkpoint."""
    if not inputs.has("similarity"):
        return None
    sim = inputs.results["similarity"]
    labels = ordered(sim.checkpoint.values)
    panels = [(ref, metric) for ref in ("base", "previous") for metric in ("cosine", "linear_cka")]
    panels = [(r, m) for r, m in panels if r in sim.reference and m in sim.metric]
    fig, axes = plt.subplots(2, 2, figsize=(11, 1.6 + 0.55 * len(labels) * 2), squeeze=False)
    shown = sim.sel(metric=["cosine", "linear_cka"])
    vmin = min(0.99, float(np.floor(float(shown.min()) * 100) / 100))  # zoom in when all ≈ 1
    for ax, (ref, metric) in zip(axes.flat, panels, strict=False):
        rows = labels if ref == "base" else labels[1:]
        grid = sim.sel(reference=ref, metric=metric).sel(checkpoint=rows)
        frame = grid.transpose("checkpoint", "layer").to_pandas()
        sns.heatmap(
            frame,
            ax=ax,
            vmin=vmin,
            vmax=1,
            cmap="viridis",
            annot=frame.shape[1] <= 13,
            fmt=".3f",
            annot_kws={"fontsize": 7},
        )
        ax.set(title=f"{metric} vs {ref}", xlabel=LAYER_AXIS, ylabel="")
        ax.tick_params(axis="y", rotation=0)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    prev = sim.sel(reference="previous", metric="cosine") if "previous" in sim.reference else None
    reading = "Each row is a checkpoint; the left column compares it with base."
    if prev is not None and len(labels) > 1:
        steps = prev.sel(checkpoint=labels[1:]).min("layer").to_pandas()
        worst = str(steps.idxmin())
        reading = (
            f"The largest step-to-step change is into {worst} (lowest layer cosine to the "
            f"previous checkpoint {float(steps.min()):.3f}); rows are checkpoints in order."
        )
    return Plot("02-evolution", "Evolution across checkpoints", fig, reading)


def fig_layer_by_layer(inputs: ReportInputs) -> Plot | None:
    """Figure 3: layer × layer linear CKA within base and within final."""
    if not inputs.has("layer_similarity"):
        return None
    ls = inputs.results["layer_similarity"].sel(metric="linear_cka")
    labels = ordered(ls.checkpoint.values)
    fig, axes = plt.subplots(1, len(labels), figsize=(4.6 * len(labels), 4.0), squeeze=False)
    offdiag = {}
    for ax, label in zip(axes[0], labels, strict=True):
        frame = ls.sel(checkpoint=label).transpose("layer", "layer_other").to_pandas()
        sns.heatmap(
            frame,
            ax=ax,
            vmin=0,
            vmax=1,
            cmap="magma",
            square=True,
            annot=frame.shape[0] <= 13,
            fmt=".2f",
            annot_kws={"fontsize": 7},
        )
        ax.set(title=f"linear CKA within {label}", xlabel="layer")
        ax.set_ylabel("layer" if ax is axes[0, 0] else "")
        values = frame.to_numpy()
        offdiag[label] = float(np.mean(np.diag(values, k=1))) if len(values) > 1 else float("nan")
    fig.tight_layout()
    reading = "Mean CKA between adjacent layers: " + ", ".join(
        f"{label} {value:.3f}" for label, value in offdiag.items()
    )
    return Plot("03-layer-by-layer-cka", "Layer × layer CKA", fig, reading + ".")


def fig_probes(inputs: ReportInputs) -> Plot | None:
    """Figure 5: linear-probe accuracy by layer, one line per checkpoint and pooling."""
    if not inputs.has("probe_accuracy"):
        return None
    acc = inputs.results["probe_accuracy"]
    frame = acc.to_dataframe(name="accuracy").reset_index()
    frame["checkpoint"] = pd.Categorical(frame["checkpoint"], ordered(acc.checkpoint.values))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sns.lineplot(
        frame,
        x="layer",
        y="accuracy",
        hue="checkpoint",
        style="pooling",
        markers=True,
        errorbar=None,
        ax=ax,
    )
    ax.set(xlabel=LAYER_AXIS, ylabel="probe accuracy (cross-validated)")
    integer_layers(ax, acc.layer.values)
    outside_legend(ax)
    pooling = "mean" if "mean" in acc.pooling else str(acc.pooling.values[0])
    per = {
        c: acc.sel(checkpoint=c, pooling=pooling)
        for c in ("base", inputs.final)
        if c in acc.checkpoint
    }
    parts = [f"{c} peaks at {float(a.max()):.3f} (layer {int(a.idxmax())})" for c, a in per.items()]
    reading = f"With {pooling} pooling, " + " and ".join(parts) + "."
    return Plot("05-probe-accuracy", "Linear probe accuracy by layer", fig, reading)
