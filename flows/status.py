"""``layerdrift status``: which stages and pieces of a run are complete, read from the files."""

from __future__ import annotations

from layerdrift.config import load_run_config
from layerdrift.storage import RunDir, missing_chunks
from layerdrift.storage.activations import read_attrs
from layerdrift.storage.checkpoints import checkpoint_complete
from layerdrift.storage.rundir import REPORT_FILE
from layerdrift.tasks.data import data_complete, read_dataset_info
from layerdrift.tasks.features import feature_results_written, features_complete
from layerdrift.tasks.finetune import planned_checkpoints
from layerdrift.tasks.sae.run import sae_complete, saes_evaluated
from layerdrift.tasks.similarity.run import similarity_complete

COMPLETE, MISSING = "complete", "missing"


def _state(done: bool) -> str:
    return COMPLETE if done else MISSING


def run_status(run_url: str) -> list[tuple[str, str, str]]:
    """Rows of (stage, piece, state) for the run at ``run_url``, in pipeline order."""
    run = RunDir(run_url)
    config = load_run_config(run.read_text("config.json"))
    rows = [("data", "splits", _state(data_complete(run)))]
    if not data_complete(run):
        return rows
    n_train = read_dataset_info(run)["split_sizes"]["train"]
    labels = [label for _, label in planned_checkpoints(config, n_train)]
    rows += [("finetune", label, _state(checkpoint_complete(run, label))) for label in labels]

    attrs = read_attrs(run.activations())
    if attrs is None:
        rows.append(("extract", "activations.zarr", MISSING))
        return rows
    for label in labels:
        missing = len(missing_chunks(run.activations(), label))
        rows.append(("extract", label, COMPLETE if not missing else f"{missing} chunks missing"))
    rows.append(("similarity", "results.zarr", _state(similarity_complete(run))))

    n_layers = len(attrs.get("layers", [])) or _layer_count(run)
    layers = config.sae.layers if config.sae.layers is not None else range(n_layers)
    for checkpoint in config.sae.checkpoints:
        done = [layer for layer in layers if sae_complete(run, checkpoint, layer)]
        rows.append(("sae", checkpoint, f"{len(done)}/{len(list(layers))} layers"))
    rows.append(("sae", "metrics", _state(saes_evaluated(run))))
    compared = [layer for layer in layers if features_complete(run, layer)]
    rows.append(("features", "layers", f"{len(compared)}/{len(list(layers))} layers"))
    rows.append(("features", "results", _state(feature_results_written(run))))
    rows.append(("report", REPORT_FILE, _state(run.exists(REPORT_FILE))))
    return rows


def _layer_count(run: RunDir) -> int:
    from layerdrift.storage import open_store

    return open_store(run.activations(), allow_partial=True).sizes["layer"]
