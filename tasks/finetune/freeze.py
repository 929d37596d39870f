"""Freezing layers for a fine-tune: the units are the model adapter's (:func:`layer_parameters`)."""

from __future__ import annotations

import logging

from torch import nn

from layerdrift.tasks.modeling import layer_parameters

logger = logging.getLogger(__name__)


def freeze(model: nn.Module, layers: tuple[int, ...]) -> dict[str, int]:
    """Stop gradients to the parameters of ``layers`` (0 = embeddings … L); the head trains.

    Returns the counts written to each checkpoint's ``metrics.json``: ``trainable_parameters``
    and ``total_parameters`` (elements, each shared tensor once).
    """
    if layers:
        names = set(layer_parameters(model).names(layers))
        for name, param in model.named_parameters():
            if name in names:
                param.requires_grad_(False)
        logger.info("frozen layers %s: %d parameter tensors", list(layers), len(names))
    params = list(model.parameters())
    return {
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "total_parameters": sum(p.numel() for p in params),
    }
