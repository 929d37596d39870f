"""``layerdrift status`` and ``layerdrift verify``: what of a run is complete, and intact.

``status`` is cheap: it reads markers and manifests and checks that the chunk files they
promise exist. ``verify`` also reads every chunk (sizes and checksums) and can clear what
is damaged so that the next run redoes exactly that.
"""

from __future__ import annotations

from collections import Counter

from layerdrift.config import REFERENCE_LABEL, load_run_config
from layerdrift.storage import RunDir, missing_chunks
from layerdrift.storage.activations import read_attrs
from layerdrift.storage.checkpoints import checkpoint_complete
from layerdrift.storage.lock import holding
from layerdrift.storage.rundir import (
    ACTIVATIONS_STORE,
    RANDOM_STORE,
    REPORT_FILE,
    RUN_LOCK_FILE,
)
from layerdrift.storage.schema import ACTIVATIONS
from layerdrift.storage.verify import (
    Damage,
    check_activations,
    check_results,
    repair_activations,
    repair_results,
)
from layerdrift.tasks.data import data_complete, read_dataset_info
from layerdrift.tasks.extract.prefect_tasks import random_reference_complete
from layerdrift.tasks.features import comparison_complete, comparisons, feature_results_written
from layerdrift.tasks.finetune import planned_checkpoints
from layerdrift.tasks.importance import (
    freeze_grid_complete,
    importance_complete,
    variant_complete,
)
from layerdrift.tasks.imports import given_checkpoints
from layerdrift.tasks.sae.run import sae_complete, saes_evaluated
from layerdrift.tasks.similarity.run import similarity_complete
from layerdrift.tasks.study import run_series, series_complete, study_labels

COMPLETE, MISSING = "complete", "missing"


def _state(done: bool) -> str:
    return COMPLETE if done else MISSING


def run_status(run_url: str) -> list[tuple[str, str, str]]:
    """Rows of (stage, piece, state) for the run at ``run_url``, in pipeline order."""
    run = RunDir(run_url)
    config = load_run_config(run.read_text("config.json"))
    rows = [("run", RUN_LOCK_FILE, _holder(run))]
    rows.append(("data", "splits", _state(data_complete(run))))
    if not data_complete(run):
        return rows
    if config.imports_checkpoints:
        stage, labels = "import", [item.label for item in given_checkpoints(config)]
    elif config.tasks:
        rows += [
            ("finetune", series.prefix, _state(_safe_series_complete(run, config, series.prefix)))
            for series in run_series(config)
        ]
        stage, labels = "finetune", [REFERENCE_LABEL]
        if all(data_complete(run.task_run(s.prefix)) for s in run_series(config)):
            labels = study_labels(run, config)
    else:
        n_train = read_dataset_info(run)["split_sizes"]["train"]
        stage, labels = "finetune", [label for _, label in planned_checkpoints(config, n_train)]
    rows += [(stage, label, _state(checkpoint_complete(run, label))) for label in labels]

    attrs = read_attrs(run.activations())
    if attrs is None or "schema_version" not in attrs:
        cut = "incomplete: its creation was cut short (the next run creates it again)"
        rows.append(("extract", "activations.zarr", MISSING if attrs is None else cut))
        return rows
    lost = _lost_chunks(check_activations(run.activations(), full=False), attrs)
    for label in labels:
        missing = len(missing_chunks(run.activations(), label))
        state = COMPLETE if not missing else f"{missing} chunks missing"
        if lost.get(label):
            state = f"incomplete: {_chunks(lost[label])} missing or damaged (layerdrift verify)"
        rows.append(("extract", label, state))
    if config.similarity.random_floor:
        rows.append(("extract", "random", _state(random_reference_complete(run))))
    results_lost = len(check_results(run.results(), full=False))
    state = _state(similarity_complete(run))
    if results_lost:
        state = f"incomplete: {_chunks(results_lost)} missing or damaged (layerdrift verify)"
    rows.append(("similarity", "results.zarr", state))
    importance = _state(importance_complete(run, config))
    if config.imports_checkpoints:
        importance = "skipped (checkpoints are imported, not fine-tuned here)"
    rows.append(("importance", "task_reversion" if config.tasks else "layer_reversion", importance))
    grid = config.importance.freeze_grid
    for k in grid:
        rows.append(("importance", f"freeze-{k}", _state(variant_complete(run, config, k))))
    if grid:
        rows.append(("importance", "freeze_grid", _state(freeze_grid_complete(run, config))))

    n_layers = len(attrs.get("layers", [])) or _layer_count(run)
    layers = config.sae.layers if config.sae.layers is not None else range(n_layers)
    for checkpoint in config.sae.checkpoints:
        done = [layer for layer in layers if sae_complete(run, checkpoint, layer)]
        rows.append(("sae", checkpoint, f"{len(done)}/{len(list(layers))} layers"))
    rows.append(("sae", "metrics", _state(saes_evaluated(run))))
    for finetuned in comparisons(config):
        compared = [layer for layer in layers if comparison_complete(run, config, layer, finetuned)]
        what = "layers" if finetuned == config.features.finetuned else finetuned
        rows.append(("features", what, f"{len(compared)}/{len(list(layers))} layers"))
    rows.append(("features", "results", _state(feature_results_written(run, config))))
    rows.append(("report", REPORT_FILE, _state(run.exists(REPORT_FILE))))
    return rows


def _safe_series_complete(run: RunDir, config, prefix: str) -> bool:
    try:
        return series_complete(run, config, prefix)
    except (FileNotFoundError, KeyError, ValueError):
        return False


def _chunks(count: int) -> str:
    return f"{count} written chunk" + ("s" if count != 1 else "")


def _holder(run: RunDir) -> str:
    """Who holds the run's lease now."""
    lock = run.lock()
    lease = lock.holder()
    if lease is None:
        return "free"
    stale = " (stale: the next run takes it over)" if lock.is_stale(lease) else ""
    return f"held by pid {lease.get('pid')} on {lease.get('host')} since {lease.get('time')}{stale}"


def _lost_chunks(damage: list[Damage], attrs: dict) -> Counter:
    """Written activation chunks whose files are gone or cut, counted per checkpoint label."""
    lost = {(d.chunk[0], d.chunk[2]) for d in damage if d.array == ACTIVATIONS}
    return Counter(attrs["checkpoints"][checkpoint] for checkpoint, _ in lost)


def verify_run(run_url: str, repair: bool = False) -> tuple[list[Damage], list[str]]:
    """Every damaged chunk of the run's two stores; with ``repair``, clear them.

    Returns the damage and one line per repair made.
    """
    run = RunDir(run_url)
    if repair:  # no run may write while pieces are cleared
        with holding(run.lock()):
            return _verify(run, repair=True)
    return _verify(run, repair=False)


def _verify(run: RunDir, repair: bool) -> tuple[list[Damage], list[str]]:
    """The activation stores (the run's, and the random floor's when there is one), then
    results.zarr."""
    stores = [(run.activations(), ACTIVATIONS_STORE)]
    if read_attrs(run.random_activations()) is not None:
        stores.append((run.random_activations(), RANDOM_STORE))
    damage: list[Damage] = []
    repaired: list[str] = []
    for url, name in stores:
        store_damage = check_activations(url)
        damage += store_damage
        if repair and store_damage:
            cleared = repair_activations(url, store_damage)
            repaired += [f"{name}: {label} token chunk {chunk}" for label, chunk in cleared]
            if not cleared:
                repaired.append(f"{name} removed: the next run creates and fills it again")
    results_damage = check_results(run.results())
    if repair and results_damage:
        repair_results(run.results())
        repaired.append("results.zarr removed: the next run recomputes it from the stores")
    return damage + results_damage, repaired


def _layer_count(run: RunDir) -> int:
    from layerdrift.storage import open_store

    return open_store(run.activations(), allow_partial=True).sizes["layer"]
