"""Fine-tune one series of a run of several tasks and adopt its checkpoints into the run.

A series is fine-tuned in ``<run>/tasks/<prefix>/`` exactly as a run of one task would be
(data splits, resumable training state, a checkpoint per scheduled step). When it has
finished, each checkpoint folder is copied to ``<run>/checkpoints/<prefix>/<label>/``
(``metrics.json`` last, with the series' task and seed added), the first series' ``base``
becomes the run's ``base``, and the series' own checkpoint folders are deleted. A kill at
any point resumes: training from its last checkpoint, adoption from the first folder whose
``metrics.json`` is missing.
"""

from __future__ import annotations

import json
import logging

from layerdrift.config import REFERENCE_LABEL, RunConfig
from layerdrift.storage.checkpoints import (
    METRICS_FILE,
    checkpoint_complete,
    read_checkpoint_metrics,
)
from layerdrift.storage.rundir import CHECKPOINTS_DIR, RunDir
from layerdrift.tasks.data import data_complete, prepare_data, read_dataset_info
from layerdrift.tasks.finetune import finetune, finetune_fingerprint, planned_checkpoints
from layerdrift.tasks.study.series import Series, find_series, run_series, series_config

logger = logging.getLogger(__name__)

SERIES_BASE_METRICS = "base-metrics.json"


def series_labels(run: RunDir, cfg: RunConfig, series: Series) -> list[tuple[str, str]]:
    """(series' own label, run's label) of every checkpoint the series adds to the run, in
    step order: ``base`` for the first series only, then its later checkpoints. Needs the
    series' data (its training split's size sets the schedule)."""
    scfg = series_config(cfg, series)
    n_train = read_dataset_info(run.task_run(series.prefix))["split_sizes"]["train"]
    first = run_series(cfg)[0].prefix == series.prefix
    out = []
    for _, leaf in planned_checkpoints(scfg, n_train):
        if leaf == REFERENCE_LABEL:
            if first:
                out.append((leaf, REFERENCE_LABEL))
        else:
            out.append((leaf, series.label(leaf)))
    return out


def series_complete(run: RunDir, cfg: RunConfig, prefix: str) -> bool:
    """Whether series ``prefix`` is fine-tuned and every checkpoint of it adopted into ``run``
    (under the same fine-tuning configuration)."""
    series = find_series(cfg, prefix)
    if not data_complete(run.task_run(prefix)):
        return False
    fingerprint = finetune_fingerprint(series_config(cfg, series))
    return all(
        checkpoint_complete(run, label)
        and read_checkpoint_metrics(run, label).get("fingerprint") == fingerprint
        for _, label in series_labels(run, cfg, series)
    )


def _adopt(source: RunDir, leaf: str, run: RunDir, label: str, extra: dict) -> None:
    """Copy checkpoint ``leaf`` of ``source`` to ``label`` of ``run``; metrics.json last."""
    fs = run.fs
    stale = run.path(CHECKPOINTS_DIR, label, METRICS_FILE)
    if fs.exists(stale):
        fs.rm(stale)
    run.makedirs(CHECKPOINTS_DIR, label)
    folder = source.path(CHECKPOINTS_DIR, leaf)
    for entry in fs.ls(folder, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name != METRICS_FILE:
            fs.copy(entry, run.path(CHECKPOINTS_DIR, label, name), recursive=True)
    metrics = {**read_checkpoint_metrics(source, leaf), **extra}
    run.write_text(json.dumps(metrics, indent=2), CHECKPOINTS_DIR, label, METRICS_FILE)


def _keep_base_metrics(sub: RunDir, extra: dict) -> None:
    """Keep the series' own evaluation of base (its validation split, its fresh head) as
    ``<run>/tasks/<prefix>/base-metrics.json``: the start of the series' fine-tuning curve.
    Only the first series' base becomes a checkpoint of the run; a later task's base is
    the same encoder with another head, scored on other data."""
    if sub.exists(CHECKPOINTS_DIR, REFERENCE_LABEL, METRICS_FILE):
        metrics = {**read_checkpoint_metrics(sub, REFERENCE_LABEL), **extra}
        sub.write_text(json.dumps(metrics, indent=2), SERIES_BASE_METRICS)


def finetune_series(run: RunDir, cfg: RunConfig, prefix: str) -> list[str]:
    """Fine-tune series ``prefix`` (resuming), adopt its checkpoints into ``run`` and delete
    the series' own copies; returns the run labels it added, in step order."""
    series = find_series(cfg, prefix)
    scfg = series_config(cfg, series)
    sub = run.task_run(prefix)
    prepare_data(sub, scfg)
    pairs = series_labels(run, cfg, series)
    fingerprint = finetune_fingerprint(scfg)
    adopted = [
        checkpoint_complete(run, label)
        and read_checkpoint_metrics(run, label).get("fingerprint") == fingerprint
        for _, label in pairs
    ]
    if not all(adopted):
        todo = [leaf for (leaf, _), done in zip(pairs, adopted, strict=True) if not done]
        if not all(checkpoint_complete(sub, leaf) for leaf in todo):
            logger.info("fine-tuning task series %s in %s", prefix, sub.url)
            finetune(sub, scfg)
        extra = {"task": series.task.name, "seed": series.seed, "series": prefix}
        for (leaf, label), done in zip(pairs, adopted, strict=True):
            if not done:
                _adopt(sub, leaf, run, label, extra)
        _keep_base_metrics(sub, extra)
        logger.info("adopted %d checkpoints of %s into %s", len(pairs), prefix, run.url)
    if sub.exists(CHECKPOINTS_DIR):
        sub.fs.rm(sub.path(CHECKPOINTS_DIR), recursive=True)
    return [label for _, label in pairs]


def study_labels(run: RunDir, cfg: RunConfig) -> list[str]:
    """Every checkpoint label of a run of several tasks, ``base`` first, series in order
    (needs each series' data)."""
    labels: list[str] = []
    for series in run_series(cfg):
        labels += [label for _, label in series_labels(run, cfg, series)]
    return labels
