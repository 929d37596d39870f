"""Everything the report reads, gathered once: config, checkpoint metrics, results, cards.

Only the small outputs are loaded into memory (per-layer metrics, per-token drift, metrics
JSON); the activation store is opened lazily and read only for the few chosen sentences.
A missing optional input is recorded in :attr:`ReportInputs.missing` with the stage that
would have produced it, so the report can say what did not run.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

import pandas as pd
import xarray as xr

from layerdrift.config import RunConfig, load_run_config
from layerdrift.storage.results import list_results, open_result
from layerdrift.storage.rundir import CARDS_PATH, CHECKPOINTS_DIR, CONFIG_FILE, RunDir
from layerdrift.tasks.data import UNLABELLED_NOTE, data_complete, probe_set_labelled
from layerdrift.tasks.study.finetune import SERIES_BASE_METRICS
from layerdrift.tasks.study.series import run_series

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
METRIC_COLUMNS = ["step", "epoch", "train_loss", "val_loss", "val_accuracy"]

# Which stage writes each results group; used to say what did not run.
PRODUCERS = {
    "similarity": "similarity",
    "layer_similarity": "similarity",
    "drift": "similarity",
    "probe_accuracy": "similarity (probes)",
    "sae_metrics": "sae",
    "crosscoder_counts": "features",
    "matched_fraction": "features",
    "task_specific_fraction": "features",
    "layer_reversion": "importance",
}

# Groups read at the ``final`` checkpoint; without it they cannot be drawn.
NEEDS_FINAL = ("similarity", "drift", "similarity_ci")


def checkpoint_order(label: str) -> tuple:
    """Sort key putting ``base`` first, ``step-NNNNNN`` by step, then ``final``; in a run of
    several tasks, each task's labels (``topic/step-000063``) after, task by task."""
    if "/" in label:
        prefix, leaf = label.rsplit("/", 1)
        return (3, prefix, checkpoint_order(leaf))
    if label == "base":
        return (0, 0.0, label)
    if label == "final":
        return (2, 0.0, label)
    match = re.fullmatch(r"step-(\d+)", label)
    return (1, float(match.group(1)) if match else float("inf"), label)


@dataclass
class ReportInputs:
    """What one run directory holds for the report.

    ``results`` maps a group name to its DataArray, loaded into memory (``drift`` holds only
    the final checkpoint: [1, layer, token]); ``metrics`` has one
    row per checkpoint (index = label, in training order) with step, epoch, train_loss,
    val_loss and val_accuracy; ``confusion`` is the final checkpoint's confusion matrix
    (rows true, columns predicted) when present.
    """

    run: RunDir
    config: RunConfig | None
    metrics: pd.DataFrame
    confusion: list[list[int]] | None
    label_names: list[str]
    results: dict[str, xr.DataArray]
    cards: list[dict]
    missing: list[str] = field(default_factory=list)
    final: str = "final"  # the fine-tuned checkpoint (given checkpoints keep their labels)
    # A run of several tasks: each series' own evaluation of base (its data, its head), the
    # start of its fine-tuning curve; {prefix: metrics row}.
    series_bases: dict[str, dict] = field(default_factory=dict)

    def has(self, *names: str) -> bool:
        """Whether every named results group is present."""
        return all(name in self.results for name in names)


def read_metrics(run: RunDir) -> tuple[pd.DataFrame, list[list[int]] | None, list[str]]:
    """Per-checkpoint metrics from ``checkpoints/<label>/metrics.json``.

    Returns the frame (index = label in training order), the final confusion matrix and the
    label names (both None / empty when absent).
    """
    rows, confusion, names = {}, None, []
    if run.exists(CHECKPOINTS_DIR):
        for label in _checkpoint_labels(run):
            data = json.loads(run.read_text(CHECKPOINTS_DIR, label, METRICS_FILE))
            rows[label] = {key: data.get(key) for key in METRIC_COLUMNS}
            if label == "final":
                confusion = data.get("confusion_matrix")
            names = [str(n) for n in data.get("label_names") or names]
    labels = sorted(rows, key=checkpoint_order)
    frame = pd.DataFrame([rows[label] for label in labels], index=labels, columns=METRIC_COLUMNS)
    frame.index.name = "checkpoint"
    return frame.astype("float64"), confusion, names


def read_series_bases(run: RunDir, config: RunConfig) -> dict[str, dict]:
    """Per series of a run of several tasks, its evaluation of base before fine-tuning
    (``tasks/<prefix>/base-metrics.json``), as a metrics row; {} for a run of one task."""
    out = {}
    for series in run_series(config):
        sub = run.task_run(series.prefix)
        if sub.exists(SERIES_BASE_METRICS):
            data = json.loads(sub.read_text(SERIES_BASE_METRICS))
            out[series.prefix] = {key: data.get(key) for key in METRIC_COLUMNS}
    return out


def _checkpoint_labels(run: RunDir) -> list[str]:
    """Labels of the checkpoint folders holding a metrics.json, nested ones (a run of
    several tasks: ``topic/final``, ``sentiment/seed-1/final``) included."""
    root = run.path(CHECKPOINTS_DIR).rstrip("/")
    labels = []
    for found in run.fs.glob(run.path(CHECKPOINTS_DIR, "**", METRICS_FILE)):
        label = str(found)[len(root) + 1 :].rsplit("/", 1)[0]
        if label != METRICS_FILE and not label.startswith("."):
            labels.append(label)
    return sorted(labels)


def load_inputs(run: RunDir) -> ReportInputs:
    """Read config, metrics, every results group and the feature cards of ``run``."""
    if not run.exists(CONFIG_FILE):
        raise FileNotFoundError(
            f"{run.url} has no {CONFIG_FILE}: it is not a layerdrift run directory "
            "(run `layerdrift run` first, or pass the folder that holds config.json)"
        )
    config = load_run_config(run.read_text(CONFIG_FILE))
    metrics, confusion, names = read_metrics(run)
    missing = []
    if metrics.empty:
        missing.append("finetune: no checkpoint metrics.json found")
    results: dict[str, xr.DataArray] = {}
    present = list_results(run.results())
    final = config.final_label
    for name in present:
        data = open_result(run.results(), name)[name]
        if name in NEEDS_FINAL and final not in data.coords["checkpoint"].values:
            missing.append(f"{PRODUCERS[name]}: `{name}` has no {final} checkpoint yet")
            continue
        if name == "drift":  # per token: only the final checkpoint is drawn
            data = data.sel(checkpoint=[final])
        results[name] = data.load()
    absent: dict[str, list[str]] = {}
    for name, stage in PRODUCERS.items():
        if name not in present:
            absent.setdefault(stage, []).append(f"`{name}`")
    missing += [
        f"{stage}: results.zarr has no {', '.join(names)}" for stage, names in absent.items()
    ]
    if data_complete(run) and not probe_set_labelled(run):
        missing.insert(0, f"probes and task-specific latents: {UNLABELLED_NOTE}")
    cards: list[dict] = []
    if run.exists(*CARDS_PATH):
        cards = json.loads(run.read_text(*CARDS_PATH))
    else:
        missing.append("features: no features/cards.json")
    for line in missing:
        logger.info("report: skipped, %s", line)
    bases = read_series_bases(run, config)
    return ReportInputs(
        run, config, metrics, confusion, names, results, cards, missing, final, bases
    )
