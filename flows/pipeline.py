"""The layerdrift pipeline flow: data → fine-tune → extract → similarity → importance → SAEs
→ report.

This module only wires stages together; every number is computed in ``tasks/``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from layerdrift.config import RunConfig
from layerdrift.flows.stages import StageLedger, uncached
from layerdrift.storage import RunDir, save_run_config
from layerdrift.storage.activations import missing_chunks
from layerdrift.storage.lock import holding
from layerdrift.tasks.data import (
    UNLABELLED_NOTE,
    data_complete,
    prepare_data_task,
    probe_set_labelled,
)
from layerdrift.tasks.extract import create_store_task, extract_checkpoint_task
from layerdrift.tasks.extract.prefect_tasks import (
    extract_on_dask_task,
    extract_random_task,
    random_reference_complete,
)
from layerdrift.tasks.features import (
    compare_features_task,
    comparison_complete,
    comparison_pair,
    comparisons,
    crosscoder_complete,
    feature_layers,
    feature_results_written,
    train_crosscoders_on_dask_task,
    write_features_task,
)
from layerdrift.tasks.finetune import finetune_complete, finetune_task, finished_checkpoints
from layerdrift.tasks.importance import (
    freeze_grid_complete,
    freeze_grid_task,
    freeze_variant_task,
    importance_complete,
    importance_task,
    refresh_drift_importance_task,
    variant_complete,
)
from layerdrift.tasks.imports import given_checkpoints, import_checkpoints_task, imports_complete
from layerdrift.tasks.preflight import preflight
from layerdrift.tasks.report import build_report_task, publish_artifacts
from layerdrift.tasks.sae import (
    evaluate_saes_task,
    sae_complete,
    sae_targets,
    saes_evaluated,
    train_sae_task,
    train_saes_on_dask_task,
)
from layerdrift.tasks.similarity.run import compute_similarity_task, similarity_complete
from layerdrift.tasks.study import finetune_series_task, run_series, series_complete, study_labels


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    name = config.name if isinstance(config, RunConfig) else (config or {}).get("name", "run")
    return f"layerdrift-{name}"


@flow(
    name="layerdrift-pipeline",
    flow_run_name=_run_name,
    validate_parameters=True,
    persist_result=False,
)
def pipeline(config: RunConfig) -> dict[str, Any]:
    """Run every stage for one configuration; a rerun resumes and reuses finished stages.

    The inputs are checked before anything is written, and the run's lease is held
    throughout, so a second process cannot run the same run at once. Returns the run
    directory, the stage outcomes (``ran``, ``cached`` or ``skipped``), the wall time of each
    stage that ran, the checkpoint labels and the report path.
    """
    logger = get_run_logger()
    run = RunDir(config.run_url)
    info = preflight(config)
    with holding(run.lock()):
        save_run_config(run, config.to_json(), config.config_hash())
        logger.info("run directory %s (config %s)", run.url, config.config_hash())
        ledger = StageLedger(run)
        labels = _prepare(ledger, run, config)
        logger.info("checkpoints: %s", ", ".join(labels))
        _extract(ledger, run, config, labels)
        ledger.call(
            "similarity",
            compute_similarity_task,
            run,
            config,
            done=_safe(similarity_complete, run),
        )
        importance = _importance(ledger, run, config, info.shared_module)
        if config.sae.enabled:
            _train_saes(ledger, run, config)
            _compare_features(ledger, run, config)
            if importance and ledger.outcomes.get("features") == "ran":
                # The features stage's transfer FVUs join the measures drift is ranked by.
                refresh = refresh_drift_importance_task
                ledger.call("drift-importance", refresh, run, config, done=False)
        else:
            ledger.skipped("sae", "sae.enabled is false")
        report_path = None
        if config.report.enabled:
            with ledger.timed("report"):
                report_path = uncached(build_report_task)(run)
                publish_artifacts(run)
        else:
            ledger.skipped("report", "report.enabled is false")
    logger.info("stages: %s", ledger.outcomes)
    return {
        "run_dir": run.url,
        "checkpoints": labels,
        "stages": ledger.outcomes,
        "stage_seconds": ledger.seconds,
        "report": report_path,
    }


def _prepare(ledger: StageLedger, run: RunDir, config: RunConfig) -> list[str]:
    """Data and fine-tuning (or importing the given checkpoints, or one fine-tune per task
    and seed); returns the checkpoint labels, read from ``checkpoints/``."""
    ledger.call("data", prepare_data_task, run, config, done=_safe(data_complete, run))
    if config.imports_checkpoints:
        done = _safe(imports_complete, run, config)
        ledger.skipped("finetune", "checkpoints are given")
        ledger.call("import", import_checkpoints_task, run, config, done=done)
        return [item.label for item in given_checkpoints(config)]
    if config.tasks:
        ledger.skipped("finetune", "a run of several tasks: one fine-tune per task and seed")
        for series in run_series(config):
            done = _safe(series_complete, run, config, series.prefix)
            ledger.call(f"finetune:{series.prefix}", finetune_series_task, run, config,
                        series.prefix, done=done)  # fmt: skip
        return study_labels(run, config)
    done = _safe(finetune_complete, run, config)
    ledger.call("finetune", finetune_task, run, config, done=done)
    return finished_checkpoints(run, config)


def _extract(ledger: StageLedger, run: RunDir, config: RunConfig, labels: list[str]) -> None:
    """Create the activation store (or keep the one there) and fill what is missing; then
    the random reference's store when ``similarity.random_floor``."""
    uncached(create_store_task)(run, config, labels)
    _extract_checkpoints(ledger, run, config, labels)
    if config.similarity.random_floor:
        done = _safe(random_reference_complete, run)
        ledger.call("extract:random", extract_random_task, run, config, done=done)


def _extract_checkpoints(
    ledger: StageLedger, run: RunDir, config: RunConfig, labels: list[str]
) -> None:
    store_url = run.activations()
    if config.dask_address is not None:
        todo = [label for label in labels if missing_chunks(store_url, label)]
        ledger.call("extract", extract_on_dask_task, run, config, todo, done=not todo)
        return
    for label in labels:
        done = not missing_chunks(store_url, label)
        ledger.call(f"extract:{label}", extract_checkpoint_task, run, config, label, done=done)


def _importance(
    ledger: StageLedger, run: RunDir, config: RunConfig, shared_module: str | None
) -> bool:
    """Layer reversion and its correlation with drift (every task final in a run of several
    tasks), then the freeze grid; False when the run cannot have them."""
    if config.imports_checkpoints:
        ledger.skipped("importance", "checkpoints are imported, not fine-tuned here")
        return False
    if shared_module is not None:
        ledger.skipped("importance", f"{shared_module} is shared between layers")
        return False
    done = _safe(importance_complete, run, config)
    ledger.call("importance", importance_task, run, config, done=done)
    _freeze_grid(ledger, run, config)
    return True


def _freeze_grid(ledger: StageLedger, run: RunDir, config: RunConfig) -> None:
    """The freeze grid: one fine-tune per k (each resumable, a finished k is not refitted),
    then its rows into results.zarr."""
    grid = config.importance.freeze_grid
    for k in grid:
        done = _safe(variant_complete, run, config, k)
        ledger.call(f"freeze:{k}", freeze_variant_task, run, config, k, done=done)
    if grid:
        done = _safe(freeze_grid_complete, run, config)
        ledger.call("freeze_grid", freeze_grid_task, run, config, done=done)


def _train_saes(ledger: StageLedger, run: RunDir, config: RunConfig) -> None:
    """One SAE per (checkpoint, layer) (Prefect tasks here, or Dask tasks on the cluster),
    then their metrics."""
    targets = sae_targets(run, config)
    if config.dask_address is not None:
        todo = [t for t in targets if not sae_complete(run, *t)]
        ledger.call("sae", train_saes_on_dask_task, run, config, todo, done=not todo)
    else:
        for checkpoint, layer in targets:
            done = sae_complete(run, checkpoint, layer)
            ledger.call(f"sae:{checkpoint}:{layer}", train_sae_task, run, config, checkpoint,
                        layer, done=done)  # fmt: skip
    ledger.call("sae-metrics", evaluate_saes_task, run, config, done=_safe(saes_evaluated, run))


def _compare_features(ledger: StageLedger, run: RunDir, config: RunConfig) -> None:
    """Base vs fine-tuned features for every layer whose two SAEs exist."""
    if not config.features.enabled:
        ledger.skipped("features", "features.enabled is false")
        return
    if not probe_set_labelled(run):
        ledger.skipped("features", UNLABELLED_NOTE)
        return
    layers_of = {
        finetuned: feature_layers(run, config, finetuned) for finetuned in comparisons(config)
    }
    if not layers_of[config.features.finetuned]:
        ledger.skipped("features", "no layer has both a base and a fine-tuned SAE")
        return
    # The run's main comparison keeps its task names; in a run of several tasks each other
    # task final follows, named by its label (features:topic/final:3).
    for finetuned, layers in layers_of.items():
        main = finetuned == config.features.finetuned
        if config.dask_address is not None:
            pair = comparison_pair(config, finetuned)
            todo = [layer for layer in layers if not crosscoder_complete(run, layer, pair)]
            name = "crosscoders" if main else f"crosscoders:{finetuned}"
            ledger.call(name, train_crosscoders_on_dask_task, run, config, todo, finetuned,
                        done=not todo)  # fmt: skip
        for layer in layers:
            ledger.call(
                f"features:{layer}" if main else f"features:{finetuned}:{layer}",
                compare_features_task,
                run,
                config,
                layer,
                finetuned,
                done=comparison_complete(run, config, layer, finetuned),
            )
    written = feature_results_written(run, config)
    ledger.call("features", write_features_task, run, config, done=written)


def _safe(check, *args) -> bool:
    """A completeness check that treats an unreadable output as incomplete."""
    try:
        return bool(check(*args))
    except (FileNotFoundError, KeyError, ValueError):
        return False
