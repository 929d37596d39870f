"""Train the SAEs of one checkpoint, for one or several layers, from the activation store.

Several layers train from one pass over the store (one loader reading every layer's chunk,
one SAE per layer); one layer is the same call with one entry. The resumable state (all
models, Adam, step, dead-latent counters, the loader position) lives in the first SAE's
folder under ``train-state/`` until every SAE is saved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import xarray as xr

from layerdrift.config import SAEConfig
from layerdrift.storage.saes import (
    clear_train_state,
    load_train_state,
    sae_exists,
    save_train_state,
)
from layerdrift.tasks.sae.files import load_sae, save_sae
from layerdrift.tasks.sae.loader import ActivationLoader
from layerdrift.tasks.sae.model import SAESpec, SparseAutoencoder
from layerdrift.tasks.sae.train import Schedule, Trainer

logger = logging.getLogger(__name__)

INIT_SAMPLE_TOKENS = 20_000


def steps_for_budget(token_budget: int, batch_size: int) -> int:
    """Optimizer steps that consume ``token_budget`` tokens (at least one)."""
    return max(1, math.ceil(token_budget / batch_size))


def make_loader(
    ds: xr.Dataset, sources: Sequence[tuple[str, int]], cfg: SAEConfig
) -> ActivationLoader:
    """The seeded loader of ``sources`` with the split, batch and buffer of ``cfg``."""
    return ActivationLoader(
        ds,
        sources,
        batch_size=cfg.batch_size,
        heldout_fraction=cfg.heldout_fraction,
        seed=cfg.seed,
        exclude_special=cfg.exclude_special,
        buffer_chunks=cfg.buffer_chunks,
    )


def new_sae(
    d_in: int, cfg: SAEConfig, model_name: str, checkpoint: str, layer: int
) -> SparseAutoencoder:
    """A freshly initialised SAE for ``layer`` (seeded by ``cfg.seed`` and the layer).

    The seed leaves out the checkpoint on purpose: the SAEs of one layer start from the same
    initialisation in every checkpoint and see tokens in the same order, so what differs
    between them is the activations alone, which is what decoder matching
    (:mod:`tasks.features.matching`) compares. On the bundled default store, two seeds on
    the very same activations shared under 1% of latents at cosine 0.7.
    """
    spec = SAESpec(
        d_in=d_in,
        d_sae=cfg.expansion_factor * d_in,
        architecture=cfg.architecture,
        k=min(cfg.k, cfg.expansion_factor * d_in),
        l1_coefficient=cfg.l1_coefficient,
        aux_coefficient=cfg.aux_coefficient,
        model_name=model_name,
        checkpoint=checkpoint,
        layer=layer,
        seed=cfg.seed,
    )
    return SparseAutoencoder(spec, generator=torch.Generator().manual_seed(cfg.seed * 1000 + layer))


def train_saes(
    ds: xr.Dataset,
    checkpoint: str,
    layers: Sequence[int],
    urls: Sequence[str],
    cfg: SAEConfig,
    model_name: str = "",
    device: str | torch.device = "cpu",
    store_generation: str = "",
) -> list[SparseAutoencoder]:
    """Train (or resume, or load) the SAEs of ``checkpoint`` at ``layers`` into ``urls``.

    ``ds`` is the activation store Dataset; ``urls[i]`` is the SAE folder of ``layers[i]``;
    ``store_generation`` (the store's generation id) is recorded in each ``cfg.json``.
    Returns the trained SAEs on ``device``, in the order of ``layers``.
    """
    if len(layers) != len(urls) or not layers:
        raise ValueError(f"need one folder per layer, got {len(layers)} layers, {len(urls)} urls")
    if all(sae_exists(url) for url in urls):
        logger.info("SAEs of %s layers %s already trained", checkpoint, list(layers))
        return [load_sae(url, device) for url in urls]
    sources = [(checkpoint, layer) for layer in layers]
    loader = make_loader(ds, sources, cfg)
    models = [new_sae(loader.d_in, cfg, model_name, checkpoint, layer) for layer in layers]
    sample = torch.from_numpy(loader.sample(INIT_SAMPLE_TOKENS))
    for i, model in enumerate(models):
        model.init_from_sample(sample[:, i])
        model.to(device)
    schedule = Schedule(
        n_steps=steps_for_budget(cfg.token_budget, cfg.batch_size),
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        dead_tokens=cfg.dead_tokens,
        checkpoint_every=cfg.checkpoint_every,
    )
    desc = f"sae {checkpoint} L{','.join(map(str, layers))}"
    trainer = Trainer(models, schedule, desc=desc)
    state = load_train_state(urls[0])
    resumable = {"sources": [list(s) for s in sources], "store_generation": store_generation}
    if state is not None and all(state.extra.get(k) == v for k, v in resumable.items()):
        trainer.restore(state)
    elif state is not None:
        logger.warning("ignoring a training state of other layers or store in %s", urls[0])

    def checkpoint_state(t: Trainer) -> None:
        saved = t.state()
        saved.extra.update(resumable, loader_step=t.step)
        save_train_state(urls[0], saved)

    trainer.fit(loader.batches(start_step=trainer.step), on_checkpoint=checkpoint_state)
    for i, (model, url) in enumerate(zip(models, urls, strict=True)):
        model.spec.extra.update(
            train_tokens=trainer.tokens_seen,
            train_steps=trainer.step,
            train_dead_fraction=trainer.dead_fraction(i),
            train_final_loss=trainer.last_parts[i].get("loss"),
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            heldout_fraction=cfg.heldout_fraction,
            exclude_special=cfg.exclude_special,
            store_generation=store_generation,
        )
        save_sae(model, url)
    clear_train_state(urls[0])
    return models
