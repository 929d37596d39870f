"""The importance stage of a run of one task: ``layer_reversion`` and ``drift_importance``.

Loads the ``base`` and ``final`` checkpoints and the validation split the way fine-tuning
did (same tokenizer, batch size and padding), so the unmodified rows reproduce the two
checkpoints' ``metrics.json`` accuracy and loss.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr

from layerdrift.config import RunConfig
from layerdrift.storage.activations import store_generation
from layerdrift.storage.checkpoints import (
    checkpoint_complete,
    local_checkpoint_path,
    read_checkpoint_metrics,
)
from layerdrift.storage.results import list_results, open_result, write_result
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data import read_dataset_info, read_split
from layerdrift.tasks.finetune.batches import encode_texts
from layerdrift.tasks.finetune.evaluate import evaluate
from layerdrift.tasks.importance.correlation import drift_importance
from layerdrift.tasks.importance.reversion import (
    QUANTITIES,
    VARIANTS,
    Evaluate,
    base_weights,
    reversion_values,
)
from layerdrift.tasks.modeling import (
    HEAD,
    layer_parameters,
    load_classifier,
    load_tokenizer,
    resolve_model,
    select_device,
)

logger = logging.getLogger(__name__)

BASE, FINAL = "base", "final"


def unit_names(num_layers: int) -> list[str]:
    """Readable names of the units: ``embeddings``, ``block 1`` … ``block L``, ``head``."""
    return ["embeddings"] + [f"block {layer}" for layer in range(1, num_layers + 1)] + [HEAD]


def reversion_array(
    values: np.ndarray, num_layers: int, sizes: list[int], attrs: dict
) -> xr.DataArray:
    """The ``layer_reversion`` DataArray from :func:`reversion_values`' (L + 2, 6, 2) values;
    the head is layer L + 1, ``unit`` names every row and ``parameters`` counts its weights."""
    rows = range(num_layers + 2)
    return xr.DataArray(
        values,
        dims=("layer", "variant", "quantity"),
        coords={
            "layer": list(rows),
            "variant": list(VARIANTS),
            "quantity": list(QUANTITIES),
            "unit": ("layer", unit_names(num_layers)),
            "parameters": ("layer", np.asarray(sizes, dtype=np.int64)),
        },
        attrs=attrs,
    )


def validation_evaluator(run: RunDir, cfg: RunConfig, device) -> Evaluate:
    """(accuracy, loss) of a classifier on the run's validation split, as fine-tuning scored."""
    tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.trust_remote_code)
    val = read_split(run, "validation")
    encoded = encode_texts(tokenizer, val["text"].tolist(), cfg.data.max_length)
    labels = val["label"].to_numpy(np.int64)  # (n_validation,)
    n_labels = len(read_dataset_info(run)["label_names"])

    def score(model) -> tuple[float, float]:
        found = evaluate(model, encoded, labels, cfg.finetune.eval_batch_size, device,
                         tokenizer.pad_token_id, n_labels)  # fmt: skip
        return found["val_accuracy"], found["val_loss"]

    return score


def reversion_of(
    final: torch.nn.Module, base: torch.nn.Module, score: Evaluate, attrs: dict
) -> xr.DataArray:
    """``layer_reversion`` (layer, variant, quantity) of ``final`` against ``base`` (two
    classifiers of one architecture), every variant scored by ``score``."""
    layout = layer_parameters(final)
    device = next(final.parameters()).device
    weights = {k: v.to(device) for k, v in base_weights(base, layout).items()}
    params = dict(final.named_parameters())
    sizes = [sum(params[n].numel() for n in layout.names([u])) for u in layout.rows()]
    values = reversion_values(final, weights, layout, score)
    return reversion_array(values, layout.num_layers, sizes, attrs)


def layer_reversion(run: RunDir, cfg: RunConfig) -> xr.DataArray:
    """Evaluate every reversion variant of ``final`` against ``base``; write and return
    ``layer_reversion`` (layer, variant, quantity)."""
    device = select_device(cfg.device)
    final = load_classifier(local_checkpoint_path(run, FINAL)).to(device)
    base = load_classifier(local_checkpoint_path(run, BASE))
    attrs = {
        "base": BASE,
        "final": FINAL,
        "fingerprint": read_checkpoint_metrics(run, FINAL).get("fingerprint", ""),
        "n_validation": int(read_dataset_info(run)["split_sizes"]["validation"]),
    }
    array = reversion_of(final, base, validation_evaluator(run, cfg, device), attrs)
    write_result(run.results(), "layer_reversion", array)
    return array


def _transfer_fvu(results: str, cfg: RunConfig, checkpoint: str) -> xr.DataArray | None:
    """The base SAE's FVU on ``checkpoint``'s tokens, (layer,); None when the features stage
    has not written ``transfer_fvu`` or compares another pair of checkpoints."""
    compared = (cfg.features.base, cfg.features.finetuned) == (BASE, checkpoint)
    if not compared or "transfer_fvu" not in list_results(results):
        return None
    found = open_result(results, "transfer_fvu")["transfer_fvu"].load()
    return found.sel(direction="base_on_finetuned")


def write_drift_importance(run: RunDir, cfg: RunConfig, reversion: xr.DataArray) -> xr.DataArray:
    """Write and return ``drift_importance`` from the run's ``similarity`` group and, when
    the features stage has run, its ``transfer_fvu``."""
    results = run.results()
    similarity = open_result(results, "similarity")["similarity"].load()
    checkpoint = reversion.attrs.get("final", FINAL)
    transfer = _transfer_fvu(results, cfg, checkpoint)
    rho = drift_importance(similarity, reversion, transfer, checkpoint)
    rho.attrs["store_generation"] = similarity.attrs.get("store_generation", "")
    rho.attrs["final"] = checkpoint
    write_result(results, "drift_importance", rho)
    logger.info("drift vs importance (Spearman): %s", rho.to_series().to_dict())
    return rho


def compute_single_importance(run: RunDir, cfg: RunConfig) -> None:
    """The stage for a run of one task: ``layer_reversion`` (unless already complete), then
    ``drift_importance``."""
    if reversion_complete(run):
        reversion = open_result(run.results(), "layer_reversion")["layer_reversion"].load()
    else:
        reversion = layer_reversion(run, cfg)
    write_drift_importance(run, cfg, reversion)


def refresh_single_drift_importance(run: RunDir, cfg: RunConfig) -> None:
    """Recompute ``drift_importance`` from the groups now in results.zarr (after the
    features stage, so ``transfer_fvu`` joins the measures); milliseconds."""
    reversion = open_result(run.results(), "layer_reversion")["layer_reversion"].load()
    write_drift_importance(run, cfg, reversion)


def reversion_complete(run: RunDir) -> bool:
    """Whether ``layer_reversion`` was computed from the final checkpoint now on disk."""
    if not checkpoint_complete(run, FINAL) or "layer_reversion" not in list_results(run.results()):
        return False
    found = open_result(run.results(), "layer_reversion")["layer_reversion"].attrs
    return found.get("fingerprint") == read_checkpoint_metrics(run, FINAL).get("fingerprint")


def single_importance_complete(run: RunDir) -> bool:
    """Whether both groups are there, for this final checkpoint and this activation store."""
    if not reversion_complete(run) or "drift_importance" not in list_results(run.results()):
        return False
    found = open_result(run.results(), "drift_importance")["drift_importance"].attrs
    return found.get("store_generation") == store_generation(run.activations())
