"""The SAE stage for a run directory: which SAEs, their training, their metrics.

- :func:`train_sae_for_run` trains ``saes/<checkpoint>/layer-<l>/`` (resuming if killed);
  :func:`train_saes_for_run` several layers of one checkpoint from one pass over the store;
- :func:`evaluate_saes_for_run` writes ``sae_metrics``, ``sae_recovery`` and
  ``latent_density`` into ``results.zarr`` for every trained SAE of the configuration.

The dictionaries themselves (architectures, training, files) are :mod:`tasks.dictionary`'s.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from layerdrift.config import RunConfig
from layerdrift.storage.activations import open_store, store_generation
from layerdrift.storage.results import list_results, open_result
from layerdrift.storage.rundir import SAES_DIR, RunDir
from layerdrift.tasks.dictionary import (
    Job,
    folder_current,
    load_dictionary,
    make_loader,
    reconstruction_metrics,
    train_dictionaries,
)
from layerdrift.tasks.dictionary.runs import checkpoint_metadata, spliced_metrics_by_layer
from layerdrift.tasks.modeling import select_device
from layerdrift.tasks.sae.results import write_sae_results

logger = logging.getLogger(__name__)


def sae_complete(run: RunDir, checkpoint: str, layer: int) -> bool:
    """Whether the SAE of (``checkpoint``, ``layer``) is saved completely in ``run``, in this
    file layout, from the store as it is now (a rebuilt store makes every SAE stale)."""
    return folder_current(run.sae(checkpoint, layer), store_generation(run.activations()))


def sae_targets(run: RunDir, cfg: RunConfig) -> list[tuple[str, int]]:
    """The (checkpoint, layer) pairs the configuration asks for that the store holds."""
    ds = open_store(run.activations())
    labels = [str(c) for c in ds["checkpoint"].values.tolist()]
    layers = cfg.sae.layers if cfg.sae.layers is not None else range(ds.sizes["layer"])
    return [(c, int(li)) for c in cfg.sae.checkpoints if c in labels for li in layers]


def sae_job(run: RunDir, cfg: RunConfig, checkpoint: str, layer: int) -> Job:
    """The dictionary job of one SAE: its folder, its source, what its file records."""
    metadata = checkpoint_metadata(run, cfg, checkpoint, layer)
    return Job(run.sae(checkpoint, layer), ((checkpoint, layer),), metadata)


def train_sae_for_run(run: RunDir, cfg: RunConfig, checkpoint: str, layer: int) -> str:
    """Train the SAE of ``checkpoint`` at ``layer`` from the run's store; returns its folder URL."""
    return train_saes_for_run(run, cfg, checkpoint, [layer])[0]


def train_saes_for_run(
    run: RunDir, cfg: RunConfig, checkpoint: str, layers: list[int]
) -> list[str]:
    """Train the SAEs of ``checkpoint`` at ``layers`` from one pass; returns their folder URLs."""
    jobs = [sae_job(run, cfg, checkpoint, layer) for layer in layers]
    generation = store_generation(run.activations())
    if all(folder_current(job.url, generation) for job in jobs):
        return [job.url for job in jobs]
    train_dictionaries(
        open_store(run.activations()),
        jobs,
        cfg.sae.dictionary,
        cfg.sae.training,
        cfg.sae,
        device=select_device(cfg.device),
        store_generation=generation,
    )
    return [job.url for job in jobs]


def saes_evaluated(run: RunDir) -> bool:
    """Whether ``sae_metrics`` covers every SAE folder currently complete in ``run``."""
    if "sae_metrics" not in list_results(run.results()):
        return False
    stored = open_result(run.results(), "sae_metrics")["sae_metrics"]
    generation = store_generation(run.activations())
    if stored.attrs.get("store_generation", "") != generation:
        return False
    evaluated = set(stored.attrs.get("saes", []))
    present = set()
    if run.exists(SAES_DIR):
        for entry in run.fs.glob(run.path(SAES_DIR, "*", "layer-*")):
            checkpoint, folder = entry.rstrip("/").rsplit("/", 2)[-2:]
            layer = int(folder.removeprefix("layer-"))
            if folder_current(run.sae(checkpoint, layer), generation):
                present.add(f"{checkpoint}/{layer}")
    return bool(present) and present <= evaluated


def evaluate_sae(
    run: RunDir, cfg: RunConfig, ds: xr.Dataset, checkpoint: str, layer: int
) -> tuple[dict[str, float], np.ndarray]:
    """Held-out metrics of one SAE (``SAE_METRICS`` and recovery details) and each latent's
    held-out firing frequency [d_sae]."""
    return evaluate_checkpoint_saes(run, cfg, ds, checkpoint, [layer])[layer]


def evaluate_checkpoint_saes(
    run: RunDir, cfg: RunConfig, ds: xr.Dataset, checkpoint: str, layers: list[int]
) -> dict[int, tuple[dict[str, float], np.ndarray]]:
    """:func:`evaluate_sae` of ``checkpoint``'s SAEs at ``layers``, by layer, with one
    classifier load and one clean pass per batch for all of them
    (:func:`tasks.dictionary.runs.spliced_metrics_by_layer`); the same numbers as one call
    each."""
    device = select_device(cfg.device)
    found: dict[int, tuple[dict[str, float], np.ndarray]] = {}
    splices = {}
    for layer in layers:
        model = load_dictionary(run.sae(checkpoint, layer), device)
        loader = make_loader(ds, [(checkpoint, layer)], cfg.sae, cfg.sae.training.batch_size)
        x, _ = loader.heldout(max_tokens=cfg.sae.eval_tokens)
        found[layer] = reconstruction_metrics(model, torch.from_numpy(x[:, 0]))
        splices[layer] = (loader, {"sae": model})
    recovered = spliced_metrics_by_layer(run, cfg, splices, checkpoint)
    return {layer: (metrics | recovered[layer]["sae"], frequency)
            for layer, (metrics, frequency) in found.items()}  # fmt: skip


def evaluate_saes_for_run(run: RunDir, cfg: RunConfig) -> dict:
    """Evaluate every trained SAE of the configuration and write the results groups.

    Returns ``{"saes": ["<checkpoint>/<layer>", ...], "metrics": {that key: {metric: value}}}``.
    """
    ds = open_store(run.activations())
    generation = store_generation(run.activations())
    targets = [t for t in sae_targets(run, cfg) if folder_current(run.sae(*t), generation)]
    if not targets:
        raise FileNotFoundError(f"no trained SAEs in {run.url}: run the SAE training tasks first")
    by_checkpoint: dict[str, list[int]] = {}
    for checkpoint, layer in targets:
        by_checkpoint.setdefault(checkpoint, []).append(layer)
    evaluated = {
        (checkpoint, layer): value
        for checkpoint, layers in by_checkpoint.items()
        for layer, value in evaluate_checkpoint_saes(run, cfg, ds, checkpoint, layers).items()
    }
    evaluated = {target: evaluated[target] for target in targets}  # the targets' order
    write_sae_results(run, evaluated, cfg.sae.heldout_fraction, generation)
    metrics = {f"{c}/{li}": m for (c, li), (m, _) in evaluated.items()}
    return {"saes": list(metrics), "metrics": metrics}
