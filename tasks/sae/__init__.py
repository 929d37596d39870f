"""The SAE stage: token-level sparse autoencoders per (checkpoint, layer) from the store.

``run`` chooses and trains the SAEs of a run and evaluates them, ``results`` writes their
``results.zarr`` groups, ``prefect_tasks`` wraps both for the flow. The dictionaries
themselves are :mod:`tasks.dictionary`'s.
"""

from layerdrift.tasks.sae.prefect_tasks import (
    evaluate_saes_task,
    train_sae_task,
    train_saes_on_dask_task,
)
from layerdrift.tasks.sae.results import RECOVERY_QUANTITIES, SAE_METRICS
from layerdrift.tasks.sae.run import (
    evaluate_sae,
    evaluate_saes_for_run,
    sae_complete,
    sae_targets,
    saes_evaluated,
    train_sae_for_run,
    train_saes_for_run,
)

__all__ = [
    "RECOVERY_QUANTITIES",
    "SAE_METRICS",
    "evaluate_sae",
    "evaluate_saes_for_run",
    "evaluate_saes_task",
    "sae_complete",
    "sae_targets",
    "saes_evaluated",
    "train_sae_for_run",
    "train_sae_task",
    "train_saes_for_run",
    "train_saes_on_dask_task",
]
