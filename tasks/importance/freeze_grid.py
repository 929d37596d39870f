"""The freeze grid: the run's task fine-tuned again once per k, with layers 0 … k frozen.

Each k is a fine-tune of its own by :func:`tasks.finetune.finetune`, in a run folder of its
own (``<run>/importance/freeze-<k>/``) holding a copy of the run's data splits: the same
split, seed, hyperparameters and checkpoint schedule as the run, only
``finetune.freeze_layers = k`` differs. Per k the grid records validation accuracy and loss,
trainable parameters and fine-tuning seconds (the final checkpoint's ``metrics.json``), and
the per-layer linear CKA and cosine of that model's hidden states against base's on the
run's probe tokens: the similarity stage's moments and metrics, exact, computed from the
model's states in memory against the store's ``base``.

The row lands in ``freeze.json`` in the variant's folder, which marks k as done: a resumed
run skips it. Of the variant's checkpoints only ``final`` is kept (safetensors, for a later
look, and so a new activation store costs no refit); its ``base`` (a copy of the run's), the
intermediate ones and the optimizer state are deleted once the row is written.

The row ``freeze_k = "none"`` is the run's own full fine-tune, read, not fitted again: its
final checkpoint's metrics and the ``similarity`` group's final-vs-base values.
"""

from __future__ import annotations

import hashlib
import json
import logging

import dask.array as da
import numpy as np
import xarray as xr

from layerdrift.config import ImportanceConfig, RunConfig
from layerdrift.storage.activations import open_store, store_generation
from layerdrift.storage.checkpoints import (
    TRAIN_STATE_DIR,
    checkpoint_complete,
    local_checkpoint_path,
    read_checkpoint_metrics,
)
from layerdrift.storage.results import list_results, open_result, write_result
from layerdrift.storage.results_schema import RESULT_GROUPS
from layerdrift.storage.rundir import CHECKPOINTS_DIR, DATA_DIR, FREEZE_RECORD, RunDir
from layerdrift.tasks.data import data_complete
from layerdrift.tasks.extract import store_token_states
from layerdrift.tasks.finetune import finetune, finetune_fingerprint
from layerdrift.tasks.similarity.accumulate import accumulate_moments, token_mask
from layerdrift.tasks.similarity.metrics import cosine, linear_cka

logger = logging.getLogger(__name__)

BASE, FINAL = "base", "final"
NONE = "none"  # the freeze_k label of the run's own fine-tune (nothing frozen)
SIMILARITY = {"linear_cka": linear_cka, "cosine": cosine}  # freeze_similarity's metrics
DATA_MARKER = "dataset.json"  # written last by the data stage, copied last here


def variant_config(cfg: RunConfig, k: int) -> RunConfig:
    """The run's config with layers 0 … ``k`` frozen (and no freeze grid of its own)."""
    return cfg.model_copy(
        update={
            "finetune": cfg.finetune.model_copy(update={"freeze_layers": k}),
            "importance": ImportanceConfig(),
        }
    )


def copy_data(run: RunDir, variant: RunDir) -> None:
    """Copy the run's data splits into ``variant`` (the marker last), unless already there."""
    if data_complete(variant):
        return
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in run.fs.ls(run.path(DATA_DIR), detail=False)]
    for name in sorted(names, key=lambda n: n == DATA_MARKER):
        variant.write_text(run.read_text(DATA_DIR, name), DATA_DIR, name)


def variant_similarity(run: RunDir, cfg: RunConfig, model_dir) -> np.ndarray:
    """Linear CKA and cosine per layer of the model in ``model_dir`` against the run's
    ``base`` on the probe tokens the similarity stage uses: shape (layer, metric).

    The model's hidden states are computed as extraction would store them, then both sides
    go through the similarity stage's Dask pass (:func:`accumulate_moments`).
    """
    ds = open_store(run.activations())
    base = ds["activations"].data[[str(c) for c in ds.checkpoint.values].index(BASE)]
    states = store_token_states(run.activations(), model_dir,
                                batch_size=cfg.extract.batch_size, device=cfg.device)  # fmt: skip
    acts = da.stack([base, da.from_array(states, chunks=base.chunks)])  # (2, layer, token, hidden)
    mask = token_mask(ds, cfg.similarity.exclude_special, cfg.similarity.examples)
    pairs = [((0, layer), (1, layer)) for layer in range(acts.shape[1])]
    selves, crosses = accumulate_moments(acts, pairs, mask)
    return np.array(
        [[fn(selves[a], selves[b], crosses[(a, b)]) for fn in SIMILARITY.values()]
         for a, b in pairs]
    )  # fmt: skip


def _prune(variant: RunDir) -> None:
    """Delete every checkpoint of ``variant`` but ``final``, and the optimizer state."""
    for entry in variant.fs.ls(variant.path(CHECKPOINTS_DIR), detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name != FINAL:
            variant.fs.rm(entry, recursive=True)
    logger.info("kept only the final checkpoint of %s (%s removed)", variant.url, TRAIN_STATE_DIR)


def fit_variant(run: RunDir, cfg: RunConfig, k: int) -> dict:
    """Fine-tune with layers 0 … ``k`` frozen (resuming, or reusing a final checkpoint of
    the same fine-tune), measure it, write its ``freeze.json`` row and return the row."""
    variant, vcfg = run.freeze_variant(k), variant_config(cfg, k)
    fingerprint = finetune_fingerprint(vcfg)
    kept = checkpoint_complete(variant, FINAL) and (
        read_checkpoint_metrics(variant, FINAL).get("fingerprint") == fingerprint
    )
    if not kept:
        copy_data(run, variant)
        finetune(variant, vcfg)
    metrics = read_checkpoint_metrics(variant, FINAL)
    similarity = variant_similarity(run, cfg, local_checkpoint_path(variant, FINAL))
    row = {
        "freeze_k": k,
        "frozen_layers": metrics["frozen_layers"],
        "fingerprint": fingerprint,
        "store_generation": store_generation(run.activations()),
        "accuracy": metrics["val_accuracy"],
        "loss": metrics["val_loss"],
        "trainable_parameters": metrics["trainable_parameters"],
        "finetune_seconds": metrics.get("finetune_seconds"),
        "similarity": {m: similarity[:, i].tolist() for i, m in enumerate(SIMILARITY)},
    }
    variant.write_text(json.dumps(row, indent=2), FREEZE_RECORD)
    _prune(variant)
    logger.info("freeze grid k=%d: accuracy %.3f, %d trainable parameters", k,
                row["accuracy"], row["trainable_parameters"])  # fmt: skip
    return row


def read_variant(run: RunDir, k: int) -> dict | None:
    """The ``freeze.json`` row of k (None when k has not finished)."""
    variant = run.freeze_variant(k)
    if not variant.exists(FREEZE_RECORD):
        return None
    return json.loads(variant.read_text(FREEZE_RECORD))


def row_digests(run: RunDir, cfg: RunConfig) -> list[str]:
    """A hash of each k's ``freeze.json`` (empty string when absent), in grid order: the
    grid written from these rows records them, so a row measured again rewrites the grid."""
    return [
        hashlib.sha256(variant.read_text(FREEZE_RECORD).encode()).hexdigest()[:16]
        if variant.exists(FREEZE_RECORD) else ""
        for variant in map(run.freeze_variant, cfg.importance.freeze_grid)
    ]  # fmt: skip


def variant_complete(run: RunDir, cfg: RunConfig, k: int) -> bool:
    """Whether k's row was measured from this fine-tune config and this activation store."""
    row = read_variant(run, k)
    return (
        row is not None
        and row.get("fingerprint") == finetune_fingerprint(variant_config(cfg, k))
        and row.get("store_generation") == store_generation(run.activations())
    )


def _full_finetune_row(run: RunDir, layers: int) -> tuple[list[float], np.ndarray]:
    """The ``none`` row: the run's final metrics (quantity,) and similarity (layer, metric)."""
    final = read_checkpoint_metrics(run, FINAL)
    values = [final["val_accuracy"], final["val_loss"], final["trainable_parameters"],
              final.get("finetune_seconds", np.nan)]  # fmt: skip
    sim = open_result(run.results(), "similarity")["similarity"]
    sim = sim.sel(reference=BASE, checkpoint=FINAL, metric=list(SIMILARITY)).load()
    if sim.sizes["layer"] != layers:
        raise ValueError(f"the similarity group of {run.url} has {sim.sizes['layer']} layers, "
                         f"the store {layers}: run the similarity stage again")  # fmt: skip
    return values, sim.transpose("layer", "metric").values


def freeze_grid_arrays(run: RunDir, cfg: RunConfig) -> tuple[xr.DataArray, xr.DataArray]:
    """``freeze_grid`` (freeze_k, quantity) and ``freeze_similarity`` (freeze_k, layer,
    metric) from the run's own fine-tune and every k's ``freeze.json``."""
    n_layers = open_store(run.activations()).sizes["layer"]
    values, similarity = _full_finetune_row(run, n_layers)
    table, sims, labels, through = [values], [similarity], [NONE], [-1]
    for k in cfg.importance.freeze_grid:
        row = read_variant(run, k)
        if row is None:
            raise FileNotFoundError(f"freeze grid k = {k} of {run.url} has no {FREEZE_RECORD}: "
                                    "run the importance stage (it resumes)")  # fmt: skip
        seconds = np.nan if row["finetune_seconds"] is None else row["finetune_seconds"]
        table.append([row["accuracy"], row["loss"], row["trainable_parameters"], seconds])
        sims.append(np.array([row["similarity"][m] for m in SIMILARITY]).T)
        labels.append(str(k))
        through.append(k)
    base, final = read_checkpoint_metrics(run, BASE), read_checkpoint_metrics(run, FINAL)
    attrs = {
        "base_accuracy": base["val_accuracy"],
        "base_loss": base["val_loss"],
        "num_layers": n_layers - 1,
        "total_parameters": final["total_parameters"],
        "grid": list(cfg.importance.freeze_grid),
        "rows": row_digests(run, cfg),
        "fingerprint": final.get("fingerprint", ""),
        "store_generation": store_generation(run.activations()),
    }
    coords = {"freeze_k": labels, "frozen_through": ("freeze_k", np.asarray(through, np.int64))}
    grid = RESULT_GROUPS["freeze_grid"].new(np.asarray(table, np.float64), **coords)
    sim = RESULT_GROUPS["freeze_similarity"].new(
        np.stack(sims).astype(np.float64), layer=list(range(n_layers)), **coords
    )
    return grid.assign_attrs(attrs), sim.assign_attrs(attrs)


def write_freeze_grid(run: RunDir, cfg: RunConfig) -> xr.DataArray:
    """Write ``freeze_similarity``, then ``freeze_grid`` (the marker); return the grid."""
    grid, sim = freeze_grid_arrays(run, cfg)
    write_result(run.results(), "freeze_similarity", sim)
    write_result(run.results(), "freeze_grid", grid)
    return grid


def freeze_grid_complete(run: RunDir, cfg: RunConfig) -> bool:
    """Whether ``freeze_grid`` holds this grid, written from the k rows now on disk, for
    this final checkpoint and store."""
    grid = cfg.importance.freeze_grid
    if "freeze_grid" not in list_results(run.results()):
        return False
    if not all(variant_complete(run, cfg, k) for k in grid):
        return False
    attrs = open_result(run.results(), "freeze_grid")["freeze_grid"].attrs
    return (
        list(attrs.get("grid", [])) == list(grid)
        and list(attrs.get("rows", [])) == row_digests(run, cfg)
        and attrs.get("fingerprint") == read_checkpoint_metrics(run, FINAL).get("fingerprint")
        and attrs.get("store_generation") == store_generation(run.activations())
    )
