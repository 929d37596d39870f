"""The SAE stage for a run directory, and its Prefect tasks.

- :func:`train_sae_for_run` trains ``saes/<checkpoint>/layer-<l>/`` (resuming if killed);
- :func:`train_saes_for_run` does several layers of one checkpoint from one pass;
- :func:`evaluate_saes_for_run` writes ``sae_metrics``, ``sae_recovery`` and
  ``latent_density`` into ``results.zarr`` for every trained SAE of the configuration.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr
from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.activations import open_store, store_generation
from layerdrift.storage.checkpoints import checkpoint_complete, local_checkpoint_path
from layerdrift.storage.results import list_results, open_result, write_result
from layerdrift.storage.rundir import SAES_DIR, RunDir
from layerdrift.storage.saes import read_cfg, remove_folder, sae_exists
from layerdrift.tasks.modeling import select_device
from layerdrift.tasks.retry import retry_unless_bad_input
from layerdrift.tasks.sae.evaluate import (
    DENSITY_EDGES,
    density_histogram,
    reconstruction_metrics,
    recovered_metrics,
)
from layerdrift.tasks.sae.files import load_sae
from layerdrift.tasks.sae.fit import make_loader, train_saes

logger = logging.getLogger(__name__)

SAE_METRICS = (
    "mse",
    "fvu",
    "explained_variance",
    "l0",
    "dead_fraction",
    "accuracy_recovered",
    "loss_recovered",
)
RECOVERY_QUANTITIES = (
    "accuracy_clean",
    "accuracy_sae",
    "accuracy_mean",
    "loss_clean",
    "loss_sae",
    "loss_mean",
)
MEAN_SAMPLE_TOKENS = 20_000


def sae_current(url: str, generation: str) -> bool:
    """Whether the SAE folder ``url`` is complete and trained on store ``generation``.

    SAEs saved before layerdrift recorded the generation count as current.
    """
    if not sae_exists(url):
        return False
    return read_cfg(url).get("store_generation", generation) == generation


def sae_complete(run: RunDir, checkpoint: str, layer: int) -> bool:
    """Whether the SAE of (``checkpoint``, ``layer``) is saved completely in ``run`` and was
    trained on the store as it is now (a rebuilt store makes every SAE stale)."""
    return sae_current(run.sae(checkpoint, layer), store_generation(run.activations()))


def sae_targets(run: RunDir, cfg: RunConfig) -> list[tuple[str, int]]:
    """The (checkpoint, layer) pairs the configuration asks for that the store holds."""
    ds = open_store(run.activations())
    labels = [str(c) for c in ds["checkpoint"].values.tolist()]
    layers = cfg.sae.layers if cfg.sae.layers is not None else range(ds.sizes["layer"])
    return [(c, int(li)) for c in cfg.sae.checkpoints if c in labels for li in layers]


def train_sae_for_run(run: RunDir, cfg: RunConfig, checkpoint: str, layer: int) -> str:
    """Train the SAE of ``checkpoint`` at ``layer`` from the run's store; returns its folder URL."""
    return train_saes_for_run(run, cfg, checkpoint, [layer])[0]


def train_saes_for_run(
    run: RunDir, cfg: RunConfig, checkpoint: str, layers: list[int]
) -> list[str]:
    """Train the SAEs of ``checkpoint`` at ``layers`` from one pass; returns their folder URLs."""
    urls = [run.sae(checkpoint, layer) for layer in layers]
    generation = store_generation(run.activations())
    stale = [url for url in urls if not sae_current(url, generation)]
    if not stale:
        return urls
    for url in stale:
        if sae_exists(url):
            logger.warning("SAE %s was trained on an older store: training it again", url)
            remove_folder(url)
    ds = open_store(run.activations())
    device = select_device(cfg.device)
    train_saes(
        ds,
        checkpoint,
        layers,
        urls,
        cfg.sae,
        model_name=cfg.model,
        device=device,
        store_generation=generation,
    )
    return urls


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
            if sae_current(run.sae(checkpoint, layer), generation):
                present.add(f"{checkpoint}/{layer}")
    return bool(present) and present <= evaluated


def evaluate_sae(
    run: RunDir, cfg: RunConfig, ds: xr.Dataset, checkpoint: str, layer: int
) -> tuple[dict[str, float], np.ndarray]:
    """Held-out metrics of one SAE (:data:`SAE_METRICS` + recovery details) and its density."""
    device = select_device(cfg.device)
    model = load_sae(run.sae(checkpoint, layer), device)
    loader = make_loader(ds, [(checkpoint, layer)], cfg.sae)
    x, _ = loader.heldout(max_tokens=cfg.sae.eval_tokens)
    metrics, frequency = reconstruction_metrics(model, torch.from_numpy(x[:, 0]))
    if checkpoint_complete(run, checkpoint):
        mean = torch.from_numpy(loader.sample(MEAN_SAMPLE_TOKENS)[:, 0].mean(axis=0))
        held = np.flatnonzero(loader.heldout_examples)
        metrics |= recovered_metrics(
            local_checkpoint_path(run, checkpoint),
            layer,
            model,
            mean,
            [str(t) for t in ds["text"].values[held]],
            np.asarray(ds["label"].values[held]),
            max_length=cfg.data.max_length,
            exclude_special=cfg.sae.exclude_special,
        )
    else:
        logger.warning(
            "no checkpoint %s in %s: accuracy/loss recovered left NaN", checkpoint, run.url
        )
    return metrics, density_histogram(frequency)


def evaluate_saes_for_run(run: RunDir, cfg: RunConfig) -> dict:
    """Evaluate every trained SAE of the configuration and write the results groups.

    Writes ``sae_metrics`` (checkpoint, layer, metric), ``sae_recovery`` (checkpoint, layer,
    quantity) and ``latent_density`` (checkpoint, layer, bin: lower log10 frequency edge).
    Returns ``{"saes": ["<checkpoint>/<layer>", ...], "metrics": {that key: {metric: value}}}``.
    """
    ds = open_store(run.activations())
    generation = store_generation(run.activations())
    targets = [t for t in sae_targets(run, cfg) if sae_current(run.sae(*t), generation)]
    if not targets:
        raise FileNotFoundError(f"no trained SAEs in {run.url}: run the SAE training tasks first")
    checkpoints = sorted({c for c, _ in targets}, key=[c for c, _ in targets].index)
    layers = sorted({li for _, li in targets})
    shape = (len(checkpoints), len(layers))
    values = np.full((*shape, len(SAE_METRICS)), np.nan)
    recovery = np.full((*shape, len(RECOVERY_QUANTITIES)), np.nan)
    density = np.zeros((*shape, len(DENSITY_EDGES) - 1), dtype=np.int64)
    out: dict = {"saes": [], "metrics": {}}
    for checkpoint, layer in targets:
        metrics, counts = evaluate_sae(run, cfg, ds, checkpoint, layer)
        i, j = checkpoints.index(checkpoint), layers.index(layer)
        values[i, j] = [metrics.get(m, np.nan) for m in SAE_METRICS]
        recovery[i, j] = [metrics.get(q, np.nan) for q in RECOVERY_QUANTITIES]
        density[i, j] = counts
        key = f"{checkpoint}/{layer}"
        out["saes"].append(key)
        out["metrics"][key] = metrics
        logger.info("SAE %s: %s", key, {m: round(metrics.get(m, np.nan), 4) for m in SAE_METRICS})
    coords = {"checkpoint": checkpoints, "layer": layers}
    attrs = {
        "saes": out["saes"],
        "heldout_fraction": cfg.sae.heldout_fraction,
        "store_generation": generation,
    }
    write_result(
        run.results(),
        "sae_metrics",
        xr.DataArray(
            values,
            dims=("checkpoint", "layer", "metric"),
            attrs=attrs,
            coords={**coords, "metric": list(SAE_METRICS)},
        ),
    )
    write_result(
        run.results(),
        "sae_recovery",
        xr.DataArray(
            recovery,
            dims=("checkpoint", "layer", "quantity"),
            coords={**coords, "quantity": list(RECOVERY_QUANTITIES)},
        ),
    )
    write_result(
        run.results(),
        "latent_density",
        xr.DataArray(
            density,
            dims=("checkpoint", "layer", "bin"),
            coords={**coords, "bin": DENSITY_EDGES[:-1], "bin_upper": ("bin", DENSITY_EDGES[1:])},
            attrs={
                "description": "latents per bin of log10 held-out firing frequency; "
                "the first bin also holds latents that never fire"
            },
        ),
    )
    return out


@task(
    name="train-sae",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    task_run_name="sae-{checkpoint}-layer-{layer}",
)
def train_sae_task(run: RunDir, config: RunConfig, checkpoint: str, layer: int) -> str:
    """Prefect task: :func:`train_sae_for_run`; a retry resumes from the last saved state."""
    return train_sae_for_run(run, config, checkpoint, layer)


@task(
    name="train-saes",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    task_run_name="saes-{checkpoint}",
)
def train_saes_task(
    run: RunDir, config: RunConfig, checkpoint: str, layers: list[int]
) -> list[str]:
    """Prefect task: :func:`train_saes_for_run` (several layers from one pass)."""
    return train_saes_for_run(run, config, checkpoint, layers)


@task(
    name="evaluate-saes",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def evaluate_saes_task(run: RunDir, config: RunConfig) -> dict:
    """Prefect task: :func:`evaluate_saes_for_run`; returns the evaluated SAEs and metrics."""
    return evaluate_saes_for_run(run, config)
