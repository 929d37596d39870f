"""Run-level pieces the ``sae`` and ``features`` stages share: what a dictionary's file
records about the model it reads (SAELens ``metadata``), and its metrics spliced into a
checkpoint's classifier."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerdrift.config import RunConfig
from layerdrift.storage.checkpoints import checkpoint_complete, local_checkpoint_path
from layerdrift.storage.rundir import CHECKPOINTS_DIR, RunDir
from layerdrift.tasks.data.probe import UNLABELLED_NOTE, is_labelled
from layerdrift.tasks.dictionary.evaluate import LayerSplices, recovered_metrics_by_layer
from layerdrift.tasks.dictionary.loader import ActivationLoader
from layerdrift.tasks.dictionary.model import Dictionary
from layerdrift.tasks.modeling import ModelNotFoundError, hook_names, resolve_model
from layerdrift.tasks.study.series import head_knows_probe_labels

logger = logging.getLogger(__name__)

MEAN_SAMPLE_TOKENS = 20_000  # training tokens averaged for the mean ablation


def model_name(run: RunDir, cfg: RunConfig, checkpoint: str) -> str:
    """The checkpoint's hub name (the base of a hub model) or its folder in the run."""
    if checkpoint == "base":
        try:
            if not Path(resolve_model(cfg.model)).exists():
                return cfg.model  # a hub name: the base checkpoint's encoder is that model
        except ModelNotFoundError:  # a local folder that has gone: the run's copy stays
            pass
    return run.checkpoint(checkpoint)


def checkpoint_metadata(run: RunDir, cfg: RunConfig, checkpoint: str, layer: int) -> dict[str, Any]:
    """SAELens ``metadata`` of a dictionary reading ``hidden_states[layer]`` of ``checkpoint``:
    ``model_name``, ``hook_name``, ``hf_hook_name``, ``context_size``,
    ``exclude_special_tokens`` (hook names stay None when the checkpoint folder is absent)."""
    names: dict[str, str | None] = {"hook_name": None, "hf_hook_name": None}
    if run.exists(CHECKPOINTS_DIR, checkpoint, "config.json"):
        config = json.loads(run.read_text(CHECKPOINTS_DIR, checkpoint, "config.json"))
        names = hook_names(config, layer)
    else:
        logger.info("no checkpoint folder %s in %s: hook names left empty", checkpoint, run.url)
    return {
        "model_name": model_name(run, cfg, checkpoint),
        **names,
        "context_size": cfg.data.max_length,
        "exclude_special_tokens": cfg.sae.exclude_special,
    }


def spliced_metrics_of(
    run: RunDir,
    cfg: RunConfig,
    loader: ActivationLoader,
    models: Mapping[str, Dictionary],
    checkpoint: str,
    source: int = 0,
) -> dict[str, dict[str, float]]:
    """Accuracy and loss of ``checkpoint``'s classifier with each of ``models`` spliced in
    at the loader's layer, on the loader's held-out examples, by name (the dict of
    :func:`.evaluate.recovered_metrics`); one classifier load and one clean and one
    mean-ablated pass serve them all.

    The mean ablation uses the mean of the loader's source ``source`` over a training
    sample. Each is {} (with a warning) when the run has no such checkpoint folder, and {}
    when the checkpoint's head was trained on another task than the probe set's labels.
    """
    layer = int(loader.sources[source][1])
    found = spliced_metrics_by_layer(run, cfg, {layer: (loader, models)}, checkpoint, source)
    return found[layer]


def spliced_metrics_by_layer(
    run: RunDir,
    cfg: RunConfig,
    layers: Mapping[int, tuple[ActivationLoader, Mapping[str, Dictionary]]],
    checkpoint: str,
    source: int = 0,
) -> dict[int, dict[str, dict[str, float]]]:
    """:func:`spliced_metrics_of` at several layers of ``checkpoint``'s classifier: per
    layer, a loader reading it (at ``source``) and the dictionaries to splice in there.

    One classifier load and one clean pass serve every layer
    (:func:`.evaluate.recovered_metrics_by_layer`). The loaders must hold out the same
    examples (every loader of one run's config does); each layer's mean ablation uses its
    own loader's training sample.
    """
    empty = {layer: {name: {} for name in models} for layer, (_, models) in layers.items()}
    if not checkpoint_complete(run, checkpoint):
        logger.warning("no checkpoint %s in %s: recovered metrics left NaN", checkpoint, run.url)
        return empty
    if not head_knows_probe_labels(cfg, checkpoint):
        logger.info("recovered metrics of %s left NaN: its head has another task", checkpoint)
        return empty
    loaders = [loader for loader, _ in layers.values()]
    ds = loaders[0].ds
    if not is_labelled(ds["label"].values):
        logger.info("recovered metrics left NaN: %s", UNLABELLED_NOTE)
        return empty
    heldout = loaders[0].heldout_examples
    if any(not np.array_equal(other.heldout_examples, heldout) for other in loaders[1:]):
        raise ValueError("the loaders hold out different examples: score their layers apart")
    splices = {}
    for layer, (loader, models) in layers.items():
        if int(loader.sources[source][1]) != layer:
            raise ValueError(f"the loader given for layer {layer} reads {loader.sources[source]}")
        mean = torch.from_numpy(loader.sample(MEAN_SAMPLE_TOKENS)[:, source].mean(axis=0))
        splices[layer] = LayerSplices(models, mean)
    held = np.flatnonzero(heldout)
    return recovered_metrics_by_layer(
        local_checkpoint_path(run, checkpoint),
        splices,
        [str(t) for t in ds["text"].values[held]],
        np.asarray(ds["label"].values[held]),
        max_length=cfg.data.max_length,
        exclude_special=cfg.sae.exclude_special,
    )
