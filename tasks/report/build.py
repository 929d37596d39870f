"""Build the report of a run from its stores: figures under ``figures/``, ``report.html``
and the interactive ``explorer.html``.

The figures are drawn from results.zarr, the checkpoint metrics and, for token pictures, a
few sentences of the activation store. The explorer adds what no stage stores: each
checkpoint's predictions on the probe set (kept in results.zarr as ``probe_predictions``)
and the per-latent data of every dictionary (see :mod:`tasks.report.explorer`). The same
inputs give byte-identical files (no timestamps, PNGs without creation metadata, a fixed
style).
"""

from __future__ import annotations

import logging

from layerdrift.storage.rundir import FIGURES_DIR, REPORT_FILE, RunDir
from layerdrift.tasks.report.explorer import write_explorer
from layerdrift.tasks.report.figures import (
    Plot,
    fig_evolution,
    fig_layer_by_layer,
    fig_probes,
    fig_similarity,
    png_bytes,
    theme,
)
from layerdrift.tasks.report.figures_study import fig_task_features, fig_tasks
from layerdrift.tasks.report.figures_training import fig_features, fig_sae, fig_training
from layerdrift.tasks.report.html import Picture, render
from layerdrift.tasks.report.importance import fig_importance
from layerdrift.tasks.report.load import ReportInputs, load_inputs
from layerdrift.tasks.report.summary import layer_frame, summary_lines
from layerdrift.tasks.report.tokens import Sentence, add_latents, choose_sentences, token_plots

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_PICTURES = 4


def draw(inputs: ReportInputs) -> tuple[list[Plot], list[Sentence]]:
    """Every figure the inputs allow, in report order, and the sentences of figure 4."""
    theme()
    n = inputs.config.report.token_pictures if inputs.config else DEFAULT_TOKEN_PICTURES
    sentences = choose_sentences(inputs, n)
    if sentences and not add_latents(inputs, sentences):
        logger.info("report: no final-checkpoint SAEs, token pictures show drift only")
    plots = [fig_similarity(inputs), fig_evolution(inputs), fig_layer_by_layer(inputs)]
    plots += token_plots(sentences)
    plots += [fig_probes(inputs), fig_sae(inputs), fig_features(inputs), fig_training(inputs)]
    plots += [fig_importance(inputs), fig_tasks(inputs), fig_task_features(inputs)]
    return [p for p in plots if p is not None], sentences


def save_pictures(run: RunDir, plots: list[Plot]) -> list[Picture]:
    """Render every plot to PNG, write ``figures/<name>.png`` and drop stale figure files."""
    run.makedirs(FIGURES_DIR)
    pictures = []
    for plot in plots:
        picture = Picture(plot.name, plot.title, png_bytes(plot.figure), plot.reading)
        run.fs.pipe(run.path(FIGURES_DIR, f"{plot.name}.png"), picture.png)
        pictures.append(picture)
    keep = {f"{p.name}.png" for p in pictures}
    for entry in run.fs.ls(run.path(FIGURES_DIR), detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".png") and name not in keep:
            run.fs.rm(entry)
    return pictures


def build_report(run: RunDir) -> str:
    """Draw the figures, write ``<run>/report.html`` and ``<run>/explorer.html``; return the
    report's path or URL.

    Raises FileNotFoundError when ``run`` has no config.json. Missing optional results
    (SAEs, feature comparison, probes) are skipped and listed in the report.
    """
    inputs = load_inputs(run)
    table = layer_frame(inputs)
    plots, sentences = draw(inputs)
    pictures = save_pictures(run, plots)
    text = render(inputs, table, summary_lines(inputs, table), pictures, sentences)
    run.write_text(text, REPORT_FILE)
    write_explorer(inputs)
    path = run.child_url(REPORT_FILE)
    logger.info("report: %d figures, written to %s", len(pictures), path)
    return path
