"""The importance stage of a run of several tasks: every task final reverted toward its base.

Each series (a task, once per seed) is reverted layer by layer exactly as a run of one task
is, on its own validation split (``<run>/tasks/<prefix>/``), against its own base: the run's
pretrained encoder with the classification head that series' fine-tune started from. Only
the first series' base is kept as a checkpoint of the run, so each series' base is created
again the way fine-tuning created it (its seed, then the pretrained model with the task's
labels); the ``base`` rows then reproduce ``tasks/<prefix>/base-metrics.json`` (tested).

Writes ``task_reversion`` (checkpoint × layer × variant × quantity, one row per task final)
and ``task_drift_importance`` (checkpoint × measure: each task final's Spearman rho over its
layers, and ``pooled`` over every (task, layer) point). ``layer_reversion`` and
``drift_importance`` hold the run's main fine-tune (the series of ``features.finetuned``,
else the first), so the report's section and ``layerdrift show`` read a study as a run.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
import xarray as xr

from layerdrift.config import REFERENCE_LABEL, RunConfig
from layerdrift.storage.activations import store_generation
from layerdrift.storage.checkpoints import (
    checkpoint_complete,
    local_checkpoint_path,
    read_checkpoint_metrics,
)
from layerdrift.storage.results import list_results, open_result, write_result
from layerdrift.storage.results_schema import RESULT_GROUPS
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data import read_dataset_info
from layerdrift.tasks.importance.correlation import (
    MEASURES,
    LayerEvidence,
    correlations,
    layer_evidence,
)
from layerdrift.tasks.importance.run import reversion_of, validation_evaluator
from layerdrift.tasks.modeling import load_classifier, load_tokenizer, resolve_model, select_device
from layerdrift.tasks.study.series import Series, run_series, series_config, task_coordinates

logger = logging.getLogger(__name__)

TASK_REVERSION = "task_reversion"
TASK_DRIFT = "task_drift_importance"
POOLED = "pooled"  # the task_drift_importance row over every task's layers together


def main_series(cfg: RunConfig) -> Series:
    """The series whose final is ``features.finetuned`` (the run's main comparison), else the
    first: the one ``layer_reversion`` and ``drift_importance`` hold."""
    series = run_series(cfg)
    return next((s for s in series if s.final == cfg.features.finetuned), series[0])


def series_base(scfg: RunConfig, labels: list[str]) -> torch.nn.Module:
    """Series base as its fine-tune created it: ``scfg.seed`` set, then the pretrained model
    with a fresh head for ``labels`` (the same seeded initialisation LoRA resumes from)."""
    tokenizer = load_tokenizer(resolve_model(scfg.model), scfg.trust_remote_code)
    torch.manual_seed(scfg.seed)
    return load_classifier(resolve_model(scfg.model), tokenizer, labels, scfg.trust_remote_code)


def series_reversion(run: RunDir, cfg: RunConfig, series: Series) -> xr.DataArray:
    """``layer_reversion`` of one series' final against its own base, on its validation split."""
    scfg = series_config(cfg, series)
    sub = run.task_run(series.prefix)
    info = read_dataset_info(sub)
    device = select_device(cfg.device)
    final = load_classifier(local_checkpoint_path(run, series.final)).to(device)
    base = series_base(scfg, info["label_names"])
    attrs = {
        "base": f"{series.prefix} base (the pretrained model with the head it started from)",
        "final": series.final,
        "fingerprint": read_checkpoint_metrics(run, series.final).get("fingerprint", ""),
        "n_validation": int(info["split_sizes"]["validation"]),
    }
    logger.info("layer reversion of %s on its validation split", series.final)
    return reversion_of(final, base, validation_evaluator(sub, scfg, device), attrs)


def _fingerprints(cfg: RunConfig, run: RunDir) -> dict[str, str]:
    """Per series final now on disk, its fine-tuning fingerprint."""
    return {
        s.final: read_checkpoint_metrics(run, s.final).get("fingerprint", "")
        for s in run_series(cfg)
        if checkpoint_complete(run, s.final)
    }


def _stored_rows(run: RunDir, current: dict[str, str]) -> dict[str, xr.DataArray]:
    """The rows of the ``task_reversion`` on disk still valid for the finals now on disk."""
    if TASK_REVERSION not in list_results(run.results()):
        return {}
    stored = open_result(run.results(), TASK_REVERSION)[TASK_REVERSION].load()
    prints = json.loads(stored.attrs.get("fingerprints", "{}"))
    return {
        label: _row(stored, label)
        for label in stored.checkpoint.values.tolist()
        if label in current and prints.get(label) == current[label]
    }


def _row(stored: xr.DataArray, label: str) -> xr.DataArray:
    """One task final's rows of ``task_reversion`` as its own ``layer_reversion``."""
    row = stored.sel(checkpoint=label).drop_vars(["checkpoint", "task", "seed", "method"])
    return row.assign_coords(parameters=("layer", row["parameters"].values))


def _stack(cfg: RunConfig, rows: dict[str, xr.DataArray], current: dict[str, str]) -> xr.DataArray:
    """``task_reversion`` from per-final ``layer_reversion`` rows, in series order."""
    labels = [s.final for s in run_series(cfg) if s.final in rows]
    arrays = [rows[label].drop_vars("parameters") for label in labels]
    stacked = xr.concat(arrays, dim="checkpoint", combine_attrs="drop")
    # A head's size is its task's label count: parameters per task final and layer.
    sizes = np.stack([rows[label]["parameters"].values for label in labels])
    stacked = stacked.assign_coords(
        checkpoint=labels,
        parameters=(("checkpoint", "layer"), sizes),
        **{k: ("checkpoint", v) for k, v in task_coordinates(cfg, labels).items()},
    )
    stacked.attrs = {
        "base": "each task's own base",
        "fingerprints": json.dumps({label: current.get(label, "") for label in labels}),
    }
    return stacked


def task_reversion(run: RunDir, cfg: RunConfig) -> xr.DataArray:
    """Revert every task final and write ``task_reversion`` after each one (a rerun keeps
    the rows of finals unchanged since), then the main series' ``layer_reversion``; return
    the former, (checkpoint, layer, variant, quantity)."""
    current = _fingerprints(cfg, run)
    rows = _stored_rows(run, current)
    stacked = _stack(cfg, rows, current) if rows else None
    for series in run_series(cfg):
        if series.final not in rows:
            rows[series.final] = series_reversion(run, cfg, series)
            stacked = _stack(cfg, rows, current)
            write_result(run.results(), TASK_REVERSION, stacked)
    main = main_series(cfg).final
    write_result(run.results(), "layer_reversion", rows[main].assign_attrs(final=main))
    return stacked


def _transfer_by_task(run: RunDir, cfg: RunConfig) -> dict[str, xr.DataArray]:
    """Per task final, the base SAE's FVU on its tokens over the layers with both SAEs
    (``task_features``); empty before the features stage or when it compares another base."""
    if cfg.features.base != REFERENCE_LABEL or "task_features" not in list_results(run.results()):
        return {}
    table = open_result(run.results(), "task_features")["task_features"].load()
    fvu = table.sel(quantity="transfer_fvu_base_on_finetuned")
    return {label: fvu.sel(checkpoint=label).dropna("layer") for label in fvu.checkpoint.values}


def task_evidence(run: RunDir, cfg: RunConfig, reversion: xr.DataArray) -> dict[str, LayerEvidence]:
    """Per task final, its drift and importance per layer (:func:`layer_evidence`)."""
    similarity = open_result(run.results(), "similarity")["similarity"].load()
    transfer = _transfer_by_task(run, cfg)
    return {
        label: layer_evidence(
            similarity, reversion.sel(checkpoint=label), label, transfer.get(label)
        )
        for label in reversion.checkpoint.values.tolist()
    }


def write_task_drift_importance(run: RunDir, cfg: RunConfig) -> xr.DataArray:
    """Write ``task_drift_importance`` (checkpoint, measure): each task final's rho over its
    layers, then ``pooled`` over all of them; and the main series' row as
    ``drift_importance``. Returns the former."""
    reversion = open_result(run.results(), TASK_REVERSION)[TASK_REVERSION].load()
    evidence = task_evidence(run, cfg, reversion)
    labels = list(evidence)
    values = np.stack([correlations([evidence[label]]) for label in labels]
                      + [correlations(list(evidence.values()))])  # fmt: skip
    coords = task_coordinates(cfg, labels)
    generation = store_generation(run.activations())
    table = (
        RESULT_GROUPS[TASK_DRIFT]
        .new(
            values,
            checkpoint=[*labels, POOLED],
            measure=list(MEASURES),  # the order correlations() returns
            task=("checkpoint", [*coords["task"], ""]),
            seed=("checkpoint", [*coords["seed"], -1]),
            method=("checkpoint", [*coords["method"], ""]),
        )
        .assign_attrs(store_generation=generation)
    )
    write_result(run.results(), TASK_DRIFT, table)
    main = main_series(cfg).final
    single = table.sel(checkpoint=main, drop=True)
    write_result(run.results(), "drift_importance", single.assign_attrs(
        final=main, layers=list(evidence[main].layers), store_generation=generation))  # fmt: skip
    logger.info("drift vs importance (Spearman) per task: %s", table.to_pandas().to_dict())
    return table


def compute_task_importance(run: RunDir, cfg: RunConfig) -> None:
    """The stage for a run of several tasks: ``task_reversion`` (rows still valid kept),
    then the drift-importance correlations."""
    if not task_reversion_complete(run, cfg):
        task_reversion(run, cfg)
    write_task_drift_importance(run, cfg)


def task_reversion_complete(run: RunDir, cfg: RunConfig) -> bool:
    """Whether ``task_reversion`` holds every task final now on disk."""
    current = _fingerprints(cfg, run)
    if len(current) < len(run_series(cfg)):
        return False
    return set(_stored_rows(run, current)) == set(current)


def task_importance_complete(run: RunDir, cfg: RunConfig) -> bool:
    """Whether both groups are there, for these task finals and this activation store."""
    if not task_reversion_complete(run, cfg) or TASK_DRIFT not in list_results(run.results()):
        return False
    found = open_result(run.results(), TASK_DRIFT)[TASK_DRIFT].attrs
    return found.get("store_generation") == store_generation(run.activations())
