"""The control of the feature comparison: a second SAE of the reference checkpoint.

It is trained on the same activations, held-out split and token budget as the reference
checkpoint's SAE, from another seed (so another initialisation) and another token order.
Two SAEs of the *same* activations differ only by that randomness, so

- ``matched_fraction_control`` (the reference SAE against the control, matched exactly as
  the fine-tuned SAE is) is what the matched fraction reads when fine-tuning changed
  nothing at this budget;
- ``transfer_fvu_control`` (the control SAE on the reference model's held-out activations)
  is what ``finetuned_on_base`` would read if the fine-tuned SAE were just another seed.

A matched fraction at or above its control says the comparison cannot tell base and
fine-tuned apart at this budget.
"""

from __future__ import annotations

from layerdrift.config import RunConfig, TrainingConfig
from layerdrift.storage.activations import open_store, store_generation
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.dictionary import Job, folder_current, train_dictionaries
from layerdrift.tasks.dictionary.runs import checkpoint_metadata
from layerdrift.tasks.modeling import select_device

# The control's training seed is the SAE section's plus this: another initialisation
# (seed · 1000 + layer) and another token order, the same held-out split.
CONTROL_SEED_OFFSET = 1
CONTROL_SOURCE = "control_sae"


def control_training(cfg: RunConfig) -> TrainingConfig:
    """The SAE section's training settings with the control's seed (same budget)."""
    training = cfg.sae.training
    return training.model_copy(update={"seed": training.seed + CONTROL_SEED_OFFSET})


def control_job(run: RunDir, cfg: RunConfig, layer: int) -> Job:
    """The dictionary job of the control SAE of ``features.base`` at ``layer``."""
    checkpoint = cfg.features.base
    metadata = checkpoint_metadata(run, cfg, checkpoint, layer)
    provenance = {"control_of": run.sae(checkpoint, layer)}
    return Job(run.control_sae(checkpoint, layer), ((checkpoint, layer),), metadata, provenance)


def train_control_for_run(run: RunDir, cfg: RunConfig, layer: int) -> str:
    """Train (or resume, or keep) the control SAE of ``layer``; returns its folder URL."""
    job = control_job(run, cfg, layer)
    generation = store_generation(run.activations())
    if folder_current(job.url, generation):
        return job.url
    train_dictionaries(
        open_store(run.activations()),
        [job],
        cfg.sae.dictionary,
        control_training(cfg),
        cfg.sae,
        device=select_device(cfg.device),
        store_generation=generation,
    )
    return job.url
