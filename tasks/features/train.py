"""Training a crosscoder from the store with the SAE stage's loader and trainer.

The crosscoder offers the trainer protocol of :class:`tasks.sae.model.SparseAutoencoder`
(``loss(x, dead_mask)``, ``after_backward``, ``after_step``, ``d_sae``), so
:class:`tasks.sae.train.Trainer` trains it with ``route_all`` on batches [B, 2, d_in] from an
:class:`tasks.sae.loader.ActivationLoader` over the sources ``(base, layer)`` and
``(finetuned, layer)``: the same tokens of both models, the same held-out examples as the
SAEs (same seed and fraction). Resumable through :mod:`storage.saes`'s training state; the
finished crosscoder is saved last, so its ``cfg.json`` means it is complete.
"""

from __future__ import annotations

import logging
import math

import torch
import xarray as xr

from layerdrift.config import SAEConfig
from layerdrift.storage.saes import (
    clear_train_state,
    load_train_state,
    read_cfg,
    remove_folder,
    save_train_state,
)
from layerdrift.tasks.features.config import FeaturesConfig
from layerdrift.tasks.features.crosscoder import (
    Crosscoder,
    CrosscoderCfg,
    crosscoder_exists,
    load_crosscoder,
    save_crosscoder,
)
from layerdrift.tasks.sae.loader import ActivationLoader
from layerdrift.tasks.sae.train import Schedule, Trainer, route_all

logger = logging.getLogger(__name__)


def pair_loader(
    ds: xr.Dataset, layer: int, fcfg: FeaturesConfig, sae: SAEConfig | None = None
) -> ActivationLoader:
    """Loader of (base, fine-tuned) activations of ``layer``: batches [B, 2, hidden].

    Held-out split, seed, special-token filter and buffer are the SAE section's (``sae``;
    its defaults when None), so held-out tokens are the SAEs' held-out tokens.
    """
    sae = sae or SAEConfig()
    return ActivationLoader(
        ds,
        [(fcfg.base, layer), (fcfg.finetuned, layer)],
        batch_size=fcfg.batch_size,
        heldout_fraction=sae.heldout_fraction,
        seed=sae.seed,
        exclude_special=sae.exclude_special,
        buffer_chunks=sae.buffer_chunks,
    )


def crosscoder_schedule(fcfg: FeaturesConfig) -> Schedule:
    """The optimisation schedule: ``token_budget`` token pairs in batches of ``batch_size``."""
    n_steps = max(1, math.ceil(fcfg.token_budget / fcfg.batch_size))
    return Schedule(
        n_steps=n_steps,
        learning_rate=fcfg.learning_rate,
        warmup_steps=min(fcfg.warmup_steps, n_steps // 2),
        dead_tokens=fcfg.dead_tokens,
        checkpoint_every=fcfg.checkpoint_every,
    )


def train_crosscoder(
    loader: ActivationLoader,
    cfg: CrosscoderCfg,
    folder_url: str,
    schedule: Schedule,
    device: str | torch.device = "cpu",
    init_tokens: int = 16_384,
) -> Crosscoder:
    """Train (or finish, or just load) the crosscoder saved at ``folder_url``.

    A saved crosscoder of another ``cfg.store_generation`` is stale and trained again.

    Normalisation scales and decoder bias come from ``init_tokens`` training tokens; a
    saved training state under ``<folder_url>/train-state/`` is resumed. Returns the model on
    ``device``.
    """
    if crosscoder_exists(folder_url):
        saved = read_cfg(folder_url).get("store_generation", cfg.store_generation)
        if saved == cfg.store_generation:
            logger.info("crosscoder already trained at %s", folder_url)
            return load_crosscoder(folder_url, device=device)
        logger.warning("crosscoder %s was trained on an older store: training it again", folder_url)
        remove_folder(folder_url)
    if loader.d_in != cfg.d_in or len(loader.sources) != cfg.n_models:
        raise ValueError(
            f"the loader gives {len(loader.sources)} x {loader.d_in} activations but the "
            f"crosscoder expects {cfg.n_models} x {cfg.d_in}"
        )
    torch.manual_seed(cfg.seed)
    model = Crosscoder(cfg, generator=torch.Generator().manual_seed(cfg.seed))
    model.init_from_sample(torch.as_tensor(loader.sample(init_tokens)))
    model.to(device)
    trainer = Trainer([model], schedule, route=route_all, desc=f"crosscoder L{cfg.layer}")
    state = load_train_state(folder_url)
    if state is not None and state.extra.get("store_generation", "") == cfg.store_generation:
        trainer.restore(state)
    elif state is not None:
        logger.warning("ignoring a crosscoder training state of an older store in %s", folder_url)

    def checkpoint(t: Trainer) -> None:
        saved = t.state()
        saved.extra["store_generation"] = cfg.store_generation
        save_train_state(folder_url, saved)

    trainer.fit(loader.batches(trainer.step), on_checkpoint=checkpoint)
    save_crosscoder(model, folder_url)
    clear_train_state(folder_url)
    logger.info("crosscoder layer %d saved to %s", cfg.layer, folder_url)
    return model
