"""SAE transfer: one model's SAE on the other model's activations.

``base_on_finetuned`` is the base SAE applied to the fine-tuned model's held-out
activations, ``base_on_base`` the base SAE's own reconstruction, and so on. The scan
(:mod:`.scan`) measures each direction's FVU; :func:`transfer_recovery` splices the SAEs
into the fine-tuned classifier.
"""

from __future__ import annotations

import logging

from layerdrift.config import RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.dictionary import ActivationLoader, Dictionary
from layerdrift.tasks.dictionary.runs import spliced_metrics_of

logger = logging.getLogger(__name__)

DIRECTIONS = ("base_on_finetuned", "finetuned_on_base", "base_on_base", "finetuned_on_finetuned")


def transfer_recovery(
    run: RunDir, cfg: RunConfig, loader: ActivationLoader, base: Dictionary, finetuned: Dictionary
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Accuracy recovered in the fine-tuned classifier with each SAE spliced in.

    ``loader`` reads (base, fine-tuned) of one layer. ``base_on_finetuned`` splices the base
    SAE's reconstruction of the fine-tuned hidden state into the fine-tuned classifier;
    ``finetuned_on_finetuned`` the fine-tuned SAE's. The base checkpoint's classification
    head is untrained, so the two ``*_on_base`` directions are NaN, and all are NaN without
    the fine-tuned checkpoint folder. Returns (accuracy recovered per direction, every
    quantity of ``recovered_metrics`` per direction).
    """
    out = dict.fromkeys(DIRECTIONS, float("nan"))
    details: dict[str, dict[str, float]] = {}
    spliced = {"base_on_finetuned": base, "finetuned_on_finetuned": finetuned}
    found = spliced_metrics_of(run, cfg, loader, spliced, cfg.features.finetuned, source=1)
    for name, metrics in found.items():
        if metrics:
            out[name], details[name] = metrics["accuracy_recovered"], metrics
    return out, details
