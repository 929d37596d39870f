"""Train (or resume, or load) dictionaries from the activation store: SAEs and crosscoders alike.

A :class:`Job` is one dictionary: its folder and the store sources it reads, (checkpoint,
layer) per model: one for an SAE, (base, fine-tuned) for a crosscoder. Jobs trained
together share one loader over the union of their sources, so one pass over the store
feeds the SAEs of several layers. The lifecycle of :func:`train_dictionaries`:

1. folders already complete for this layout and store generation are loaded, not trained;
   complete folders of another store generation or layout are removed;
2. the others start from a seeded initialisation (seed · 1000 + layer, so the SAEs of one
   layer start alike in every checkpoint and differ by their activations alone), with the
   input scale and decoder bias set from a sample of training tokens;
3. a training state under the first folder's ``train-state/`` (all models, Adam, step,
   dead-latent counters) is resumed when it belongs to the same sources, architectures and
   store; one is saved every ``checkpoint_every`` steps;
4. each finished dictionary is saved (``cfg.json`` last) and the state removed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import xarray as xr

from layerdrift.config import DictionaryConfig, SAEConfig, TrainingConfig
from layerdrift.storage.saes import (
    clear_train_state,
    load_train_state,
    remove_folder,
    sae_exists,
    save_train_state,
)
from layerdrift.tasks.dictionary.files import folder_current, load_dictionary, save_dictionary
from layerdrift.tasks.dictionary.loader import ActivationLoader
from layerdrift.tasks.dictionary.model import Dictionary, DictionarySpec, build
from layerdrift.tasks.dictionary.train import Trainer, schedule_for

logger = logging.getLogger(__name__)

INIT_SAMPLE_TOKENS = 20_000
DENSITY_BATCH = 4096


@dataclass(frozen=True)
class Job:
    """One dictionary to train: its folder, the (checkpoint, layer) source of each model it
    reads, SAELens ``metadata`` for its ``cfg.json`` and extra layerdrift provenance."""

    url: str
    sources: tuple[tuple[str, int], ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def layer(self) -> int:
        """The layer it reads (every source of a job is the same layer)."""
        return int(self.sources[0][1])


def make_loader(
    ds: xr.Dataset,
    sources: Sequence[tuple[str, int]],
    split: SAEConfig,
    batch_size: int,
    order_seed: int | None = None,
) -> ActivationLoader:
    """The loader of ``sources`` with the SAE section's held-out split, seed and buffer, so
    every dictionary of a run holds out the same examples; ``order_seed`` (default: that
    seed) shuffles the training tokens."""
    return ActivationLoader(
        ds,
        sources,
        batch_size=batch_size,
        heldout_fraction=split.heldout_fraction,
        seed=split.training.seed,
        exclude_special=split.exclude_special,
        buffer_chunks=split.buffer_chunks,
        order_seed=order_seed,
    )


def spec_for(cfg: DictionaryConfig, d_model: int, n_models: int) -> DictionarySpec:
    """The :class:`DictionarySpec` of a config section for inputs ``n_models`` x ``d_model``."""
    fields = ("k", "aux_coefficient", "l1_coefficient", "l0_coefficient")
    fields += ("bandwidth", "init_threshold")
    return DictionarySpec(
        d_model=d_model,
        d_sae=cfg.expansion_factor * d_model,
        architecture=cfg.architecture,
        n_models=n_models,
        **{name: getattr(cfg, name) for name in fields},
    )


@torch.no_grad()
def firing_density(model: Dictionary, x: torch.Tensor) -> torch.Tensor:
    """Share of the tokens ``x`` [n, n_models, d_model] on which each latent fires: [d_sae]."""
    device = model.b_dec.device
    fired = torch.zeros(model.d_sae, dtype=torch.float64)
    for start in range(0, len(x), DENSITY_BATCH):
        codes = model.encode(x[start : start + DENSITY_BATCH].to(device))
        fired += (codes > 0).sum(dim=0).double().cpu()
    return fired / max(len(x), 1)


def train_dictionaries(
    ds: xr.Dataset,
    jobs: Sequence[Job],
    dictionary: DictionaryConfig,
    training: TrainingConfig,
    split: SAEConfig,
    device: str | torch.device = "cpu",
    store_generation: str = "",
) -> list[Dictionary]:
    """Train, resume or load the dictionaries of ``jobs`` (the steps of this module's doc).

    ``ds`` is the activation store; ``split`` the SAE section (held-out split, seed,
    special tokens, buffer). Returns the dictionaries on ``device``, in the order of ``jobs``.
    """
    if not jobs:
        raise ValueError("no dictionaries to train: give at least one job")
    todo = [job for job in jobs if not folder_current(job.url, store_generation)]
    for job in todo:
        if sae_exists(job.url):
            logger.warning("%s is of another store or layout: training it again", job.url)
            remove_folder(job.url)
    if todo:
        _train(ds, todo, dictionary, training, split, device, store_generation)
    return [load_dictionary(job.url, device) for job in jobs]


def _train(
    ds: xr.Dataset,
    jobs: Sequence[Job],
    dictionary: DictionaryConfig,
    training: TrainingConfig,
    split: SAEConfig,
    device: str | torch.device,
    store_generation: str,
) -> None:
    """Steps 2-4 of the lifecycle for ``jobs``, none of them complete."""
    sources = list(dict.fromkeys(s for job in jobs for s in job.sources))
    routes = [[sources.index(s) for s in job.sources] for job in jobs]
    loader = make_loader(ds, sources, split, training.batch_size, order_seed=training.seed)
    sample = torch.from_numpy(loader.sample(INIT_SAMPLE_TOKENS))
    models = []
    for job, route in zip(jobs, routes, strict=True):
        spec = spec_for(dictionary, loader.d_in, len(job.sources))
        generator = torch.Generator().manual_seed(training.seed * 1000 + job.layer)
        model = build(spec, generator)
        model.init_from_sample(sample[:, route])
        models.append(model.to(device))
    desc = " ".join(f"{dictionary.architecture}:{'+'.join(c for c, _ in j.sources)}/L{j.layer}"
                    for j in jobs)  # fmt: skip
    trainer = Trainer(models, schedule_for(training), routes, desc=desc)
    resumable = {
        "sources": [list(s) for s in sources],
        "architectures": [m.name for m in models],
        "store_generation": store_generation,
    }
    state = load_train_state(jobs[0].url)
    if state is not None and all(state.extra.get(k) == v for k, v in resumable.items()):
        trainer.restore(state)
    elif state is not None:
        logger.warning("ignoring a training state of other sources or store in %s", jobs[0].url)

    def checkpoint_state(t: Trainer) -> None:
        saved = t.state()
        saved.extra.update(resumable)
        save_train_state(jobs[0].url, saved)

    trainer.fit(loader.batches(start_step=trainer.step), on_checkpoint=checkpoint_state)
    for i, (job, model, route) in enumerate(zip(jobs, models, routes, strict=True)):
        provenance = {
            "checkpoints": [c for c, _ in job.sources],
            "layer": job.layer,
            "store_generation": store_generation,
            "seed": training.seed,
            "training": training.model_dump(),
            "heldout_fraction": split.heldout_fraction,
            "exclude_special": split.exclude_special,
            "train_tokens": trainer.tokens_seen,
            "train_steps": trainer.step,
            "train_dead_fraction": trainer.dead_fraction(i),
            "train_final_loss": trainer.last_parts[i].get("loss"),
            **job.provenance,
        }
        density = firing_density(model, sample[:, route])
        save_dictionary(model, job.url, job.metadata, provenance, density)
    clear_train_state(jobs[0].url)
