"""Compare runs: their per-layer curves in one figure, and final-vs-final similarity when
comparable.

Two runs are comparable when they share the base model and the probe set (same texts and
token ids); then the per-layer similarity between their *final* checkpoints
(:mod:`.crossrun`, exact and streaming) says how differently two fine-tunes moved the same
tokens (linear CKA 1 = same representation up to rotation and scale).
"""

from __future__ import annotations

import html
import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from layerdrift.config import load_run_config
from layerdrift.storage.results import list_results, open_result
from layerdrift.storage.rundir import CONFIG_FILE, RunDir
from layerdrift.tasks.report.crossrun import FINAL, cross_run_similarity, incomparable
from layerdrift.tasks.report.figures import integer_layers, outside_legend, png_bytes, theme
from layerdrift.tasks.report.html import STYLE, Picture, figure_html, table_html

logger = logging.getLogger(__name__)

CROSS_RUN_CSV = "compare_similarity.csv"
CURVES = ("cosine", "linear_cka")


def linear_cka(x_ND: np.ndarray, y_ND: np.ndarray) -> float:
    """Linear CKA of two representations of the same n tokens, in feature space.

    ``||XcᵀYc||²_F / (||XcᵀXc||_F · ||YcᵀYc||_F)`` with column-centred Xc, Yc
    (Kornblith et al. 2019); x [n, d1], y [n, d2].
    """
    x = np.asarray(x_ND, np.float64) - np.mean(x_ND, axis=0, dtype=np.float64)
    y = np.asarray(y_ND, np.float64) - np.mean(y_ND, axis=0, dtype=np.float64)
    cross = np.linalg.norm(x.T @ y) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else float("nan")


def run_name(run: RunDir) -> str:
    """The run's configured name (its folder name when config.json cannot be read)."""
    try:
        return load_run_config(run.read_text(CONFIG_FILE)).name
    except FileNotFoundError:
        return run.url.rstrip("/").rsplit("/", 1)[-1]


def curves(runs: list[RunDir], names: list[str]) -> pd.DataFrame:
    """Long frame (run, layer, metric, value) of final-vs-base similarity per run."""
    frames = []
    for run, name in zip(runs, names, strict=True):
        if "similarity" not in list_results(run.results()):
            raise FileNotFoundError(
                f"run {run.url} has no similarity results: run its similarity stage first"
            )
        sim = open_result(run.results(), "similarity")["similarity"]
        labels = [str(c) for c in sim["checkpoint"].values]
        final = FINAL if FINAL in labels else labels[-1]  # given checkpoints may lack one
        sim = sim.sel(reference="base", checkpoint=final, metric=list(CURVES)).load()
        frame = sim.to_dataframe(name="value").reset_index()[["layer", "metric", "value"]]
        frames.append(frame.assign(run=name))
    return pd.concat(frames, ignore_index=True)


def comparison_page(
    names: list[str],
    runs: list[RunDir],
    skipped: dict[str, str],
    picture: Picture,
    table: pd.DataFrame,
) -> str:
    """The comparison as one self-contained HTML page."""
    listed = [
        f"<li>{html.escape(n)}: <code>{html.escape(r.url)}</code></li>"
        for n, r in zip(names, runs, strict=True)
    ]
    notes = [
        f"<p>No final-vs-final CKA for {html.escape(pair)}: {html.escape(why)}.</p>"
        for pair, why in skipped.items()
    ]
    head = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    head += f'<link rel="icon" href="data:,"><title>layerdrift comparison</title><style>{STYLE}'
    body = "</style></head><body><main><h1>layerdrift comparison</h1>"
    parts = [head + body, "<ul>", *listed, "</ul>", *notes, figure_html(picture)]
    parts += [table_html(table, "compare-table", index=True), "</main></body></html>\n"]
    return "\n".join(parts)


def compare_runs(runs: list[RunDir], out: Path) -> Path:
    """Write ``out/compare.png``, ``out/compare.html`` and, for comparable pairs,
    ``out/compare_similarity.csv`` (pair, layer, every metric); return the HTML path.

    Panels: cosine and linear CKA of final vs base per layer, one line per run, and, for
    every pair that shares base model and probe set, their final-vs-final CKA per layer.
    A pair that is not comparable gets a note saying why (and what would make it so).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if len(runs) < 2:
        raise ValueError("compare_runs needs at least two run directories")
    names = [run_name(r) for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n} ({r.url})" for n, r in zip(names, runs, strict=True)]
    long = curves(runs, names)
    pairs, skipped = {}, {}
    for (i, a), (j, b) in itertools.combinations(enumerate(runs), 2):
        label, why = f"{names[i]} ~ {names[j]}", incomparable(a, b)
        if why is None:
            stores = xr.open_zarr(a.activations()), xr.open_zarr(b.activations())
            pairs[label] = cross_run_similarity(*stores)
        else:
            skipped[label] = why
    theme()
    n_panels = len(CURVES) + bool(pairs)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.6 * n_panels, 3.8), squeeze=False)
    for ax, metric in zip(axes[0], CURVES, strict=False):
        sns.lineplot(
            long[long.metric == metric],
            x="layer",
            y="value",
            hue="run",
            marker="o",
            errorbar=None,
            ax=ax,
        )
        ax.set(title=f"{metric}: final vs base", ylabel=metric, ylim=(0, 1.05))
        integer_layers(ax, long.layer.unique())
        if ax is not axes[0, 0] and ax.get_legend() is not None:
            ax.get_legend().remove()
    if pairs:
        ax = axes[0, -1]
        for label, frame in pairs.items():
            ax.plot(frame.index, frame["linear_cka"], marker="o", label=label)
        ax.set(title="linear CKA: final vs final", xlabel="layer", ylim=(0, 1.05))
        integer_layers(ax, long.layer.unique())
        ax.legend(fontsize=8, loc="lower left")
    outside_legend(axes[0, 0])
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    png = png_bytes(fig)
    (out / "compare.png").write_bytes(png)
    table = long.pivot_table(index="layer", columns=["metric", "run"], values="value")
    table.columns = [f"{m} · {r}" for m, r in table.columns]
    for label, frame in pairs.items():
        table[f"final CKA · {label}"] = frame["linear_cka"]
    reading = "Final-vs-base similarity per layer for each run" + (
        "; the last panel compares the fine-tuned runs with each other." if pairs else "."
    )
    picture = Picture("compare", "Runs compared", png, reading)
    page = comparison_page(names, runs, skipped, picture, table)
    (out / "compare.html").write_text(page)
    if pairs:
        cross = pd.concat(pairs, names=["pair"]).reset_index()
        cross.to_csv(out / CROSS_RUN_CSV, index=False)
    logger.info("comparison of %d runs written to %s", len(runs), out)
    return out / "compare.html"
