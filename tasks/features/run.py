"""The feature-comparison stage for a run directory.

- :func:`compare_features_for_run` (per layer): trains (or resumes, or loads) the crosscoder
  of (base, fine-tuned) at that layer under ``<run>/crosscoders/layer-<l>/``, loads both
  SAEs, scans the layer once and writes ``<run>/features/layer-<l>.json``;
- :func:`write_feature_results` gathers the layers into ``results.zarr`` and writes
  ``<run>/features/cards.json`` for the report.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from prefect import task

from layerdrift.config import RunConfig
from layerdrift.storage.activations import open_store, store_generation
from layerdrift.storage.checkpoints import checkpoint_complete, local_checkpoint_path
from layerdrift.storage.results import list_results, open_result
from layerdrift.storage.rundir import CARDS_PATH, FEATURES_DIR, RunDir
from layerdrift.storage.saes import sae_exists
from layerdrift.tasks.features.compare import compare_layer
from layerdrift.tasks.features.config import FeaturesConfig
from layerdrift.tasks.features.crosscoder import Crosscoder, CrosscoderCfg
from layerdrift.tasks.features.results import write_feature_results as _write_results
from layerdrift.tasks.features.scan import Dictionary
from layerdrift.tasks.features.train import crosscoder_schedule, pair_loader, train_crosscoder
from layerdrift.tasks.features.transfer import DIRECTIONS
from layerdrift.tasks.modeling import select_device
from layerdrift.tasks.retry import retry_unless_bad_input
from layerdrift.tasks.sae.evaluate import recovered_metrics
from layerdrift.tasks.sae.files import load_sae
from layerdrift.tasks.sae.model import SparseAutoencoder

logger = logging.getLogger(__name__)

MEAN_SAMPLE_TOKENS = 20_000


def crosscoder_url(run: RunDir, layer: int) -> str:
    """Folder of the crosscoder of ``layer``: ``<run>/crosscoders/layer-<l>``."""
    return run.crosscoder(layer)


def layer_file(layer: int) -> tuple[str, str]:
    """Path parts of one layer's comparison inside the run."""
    return FEATURES_DIR, f"layer-{layer}.json"


def features_complete(run: RunDir, layer: int) -> bool:
    """Whether the comparison of ``layer`` is done: its ``features/layer-<l>.json`` exists
    and was made from the store as it is now (files without a generation count as current)."""
    if not run.exists(*layer_file(layer)):
        return False
    saved = json.loads(run.read_text(*layer_file(layer))).get("store_generation")
    return saved is None or saved == store_generation(run.activations())


def sae_dictionary(model: SparseAutoencoder, source: str, reads: str) -> Dictionary:
    """A loaded SAE as a :class:`Dictionary` (decoder rows [d_sae, d_in])."""
    return Dictionary(source, reads, model.encode, model.decode, model.W_dec.detach().cpu().numpy())


def crosscoder_dictionary(model: Crosscoder) -> Dictionary:
    """A crosscoder as a :class:`Dictionary`; decoder [d_sae, 2, d_in] in normalised units."""
    decoder = model.W_dec.detach().cpu().numpy()
    return Dictionary("crosscoder", "pair", model.encode, model.decode, decoder)


def transfer_recovery(
    run: RunDir, cfg: RunConfig, fcfg: FeaturesConfig, loader, layer: int, saes: dict
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Accuracy recovered in the fine-tuned classifier with each SAE spliced in.

    ``base_on_finetuned`` splices the base SAE's reconstruction of the fine-tuned hidden
    state into the fine-tuned classifier; ``finetuned_on_finetuned`` the fine-tuned SAE's.
    The base checkpoint's classification head is untrained, so the two ``*_on_base``
    directions are NaN. All NaN when the fine-tuned checkpoint folder is missing. Returns
    (accuracy recovered per direction, every quantity of ``recovered_metrics`` per direction).
    """
    out = dict.fromkeys(DIRECTIONS, float("nan"))
    details: dict[str, dict[str, float]] = {}
    if not checkpoint_complete(run, fcfg.finetuned):
        logger.warning("no checkpoint %s: transfer accuracy recovered left NaN", fcfg.finetuned)
        return out, details
    ds = loader.ds
    held = np.flatnonzero(loader.heldout_examples)
    mean = torch.from_numpy(loader.sample(MEAN_SAMPLE_TOKENS)[:, 1].mean(axis=0))
    for name, sae in (("base_on_finetuned", saes["base"]), ("finetuned_on_finetuned", saes["ft"])):
        metrics = recovered_metrics(
            local_checkpoint_path(run, fcfg.finetuned),
            layer,
            sae,
            mean,
            [str(t) for t in ds["text"].values[held]],
            np.asarray(ds["label"].values[held]),
            max_length=cfg.data.max_length,
            exclude_special=cfg.sae.exclude_special,
        )
        out[name] = metrics["accuracy_recovered"]
        details[name] = metrics
    return out, details


def compare_features_for_run(run: RunDir, cfg: RunConfig, layer: int) -> dict:
    """Compare base and fine-tuned features at ``layer``; returns the layer's result dict.

    Needs the activation store and the SAEs of ``features.base`` and ``features.finetuned``
    at ``layer``. The dict (also saved as ``features/layer-<l>.json``) holds
    ``crosscoder_counts`` {base_only, shared, finetuned_only}, ``crosscoder_dead``,
    ``matched_fraction``, ``best_match_fraction``, ``task_specific_fraction`` {source},
    ``transfer_fvu`` {direction}, ``transfer_accuracy_recovered`` {direction} (details in
    ``transfer_recovery_details``),
    ``crosscoder_fvu`` {base, finetuned}, histograms and ``cards``.
    """
    if features_complete(run, layer):
        return json.loads(run.read_text(*layer_file(layer)))
    fcfg = FeaturesConfig.from_run_config(cfg)
    device = select_device(cfg.device)
    ds = open_store(run.activations())
    saes = {
        "base": load_sae(run.sae(fcfg.base, layer), device),
        "ft": load_sae(run.sae(fcfg.finetuned, layer), device),
    }
    loader = pair_loader(ds, layer, fcfg, cfg.sae)
    d_in = loader.d_in
    cc_cfg = CrosscoderCfg(
        d_in=d_in,
        d_sae=fcfg.expansion_factor * d_in,
        architecture=fcfg.architecture,
        k=min(fcfg.k, fcfg.expansion_factor * d_in),
        l1_coefficient=fcfg.l1_coefficient,
        checkpoints=(fcfg.base, fcfg.finetuned),
        layer=layer,
        seed=fcfg.seed,
        store_generation=store_generation(run.activations()),
    )
    crosscoder = train_crosscoder(
        loader, cc_cfg, crosscoder_url(run, layer), crosscoder_schedule(fcfg), device
    )
    crosscoder.eval()
    result = compare_layer(
        loader,
        sae_dictionary(saes["base"], "base_sae", "base"),
        sae_dictionary(saes["ft"], "finetuned_sae", "finetuned"),
        crosscoder_dictionary(crosscoder),
        fcfg,
        batch_size=cfg.sae.batch_size,
        device=device,
        max_heldout_tokens=cfg.sae.eval_tokens,
    )
    recovered, details = transfer_recovery(run, cfg, fcfg, loader, layer, saes)
    result["transfer_accuracy_recovered"] = recovered
    result["transfer_recovery_details"] = details
    result["config"] = fcfg.to_dict()
    result["store_generation"] = cc_cfg.store_generation
    run.write_text(json.dumps(result, indent=1), *layer_file(layer))
    return result


def feature_layers(run: RunDir, cfg: RunConfig) -> list[int]:
    """Layers to compare: ``features.layers`` (else ``sae.layers``, else every stored layer)
    for which both SAEs exist."""
    fcfg = FeaturesConfig.from_run_config(cfg)
    layers = fcfg.layers if fcfg.layers is not None else cfg.sae.layers
    if layers is None:
        layers = range(open_store(run.activations()).sizes["layer"])
    return [
        int(layer)
        for layer in layers
        if sae_exists(run.sae(fcfg.base, layer)) and sae_exists(run.sae(fcfg.finetuned, layer))
    ]


def write_feature_results(run: RunDir, cfg: RunConfig, per_layer: list[dict] | None = None) -> None:
    """Write ``results.zarr`` feature groups and ``features/cards.json`` for the run.

    ``per_layer`` are :func:`compare_features_for_run` results; None reads every
    ``features/layer-<l>.json`` of the layers in :func:`feature_layers` that are complete.
    """
    if per_layer is None:
        per_layer = [
            json.loads(run.read_text(*layer_file(layer)))
            for layer in feature_layers(run, cfg)
            if features_complete(run, layer)
        ]
    _write_results(run, per_layer)
    logger.info(
        "feature results for layers %s written; cards in %s",
        sorted(r["layer"] for r in per_layer),
        "/".join(CARDS_PATH),
    )


def feature_results_written(run: RunDir) -> bool:
    """Whether ``features/cards.json`` (written last by :func:`write_feature_results`) exists
    and the feature groups in ``results.zarr`` come from the store as it is now."""
    if not run.exists(*CARDS_PATH) or "crosscoder_counts" not in list_results(run.results()):
        return False
    attrs = open_result(run.results(), "crosscoder_counts")["crosscoder_counts"].attrs
    return attrs.get("store_generation", "") == store_generation(run.activations())


@task(
    name="compare-features",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    task_run_name="features-layer-{layer}",
)
def compare_features_task(run: RunDir, config: RunConfig, layer: int) -> dict:
    """Prefect task: :func:`compare_features_for_run`; a retry resumes the crosscoder."""
    return compare_features_for_run(run, config, layer)


@task(
    name="write-features",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
)
def write_features_task(run: RunDir, config: RunConfig, per_layer: list[dict] | None = None) -> str:
    """Prefect task: :func:`write_feature_results`; returns the cards file URL."""
    write_feature_results(run, config, per_layer)
    return run.child_url(*CARDS_PATH)
