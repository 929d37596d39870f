"""Reverting and transplanting layers between two checkpoints, weights swapped in memory.

Every variant is the fine-tuned model with a set of units (layers 0 … L and the head, as
:func:`layer_parameters` maps them) put back to the base weights; the rest stays fine-tuned.
Transplanting layer l into base is the same model as reverting every unit but l, so one
model object serves every variant, and nothing is written to disk. Variants that revert the
same set (``revert_from`` at layer 0 and ``base``, say) are evaluated once.

The variants, per row r (a layer, or the head):

- ``final``, ``base``: nothing / everything reverted (the same at every row);
- ``revert``: r reverted; ``transplant``: everything but r reverted (base with r fine-tuned);
- ``revert_from``: r and every unit after it (the head last); ``revert_through``: r and
  every unit before it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from layerdrift.tasks.importance.replay import PrefixReplay, replay_plan
from layerdrift.tasks.modeling import LayerParameters, SiteNotFoundError

logger = logging.getLogger(__name__)

VARIANTS = ("final", "base", "revert", "transplant", "revert_from", "revert_through")
QUANTITIES = ("accuracy", "loss")

Unit = int | str
Evaluate = Callable[[nn.Module], tuple[float, float]]  # model -> (accuracy, loss)


def reverted_units(variant: str, row: int, units: list[Unit]) -> frozenset[Unit]:
    """The units put back to base for ``variant`` at ``units[row]`` (units in forward order)."""
    chosen = {
        "final": [],
        "base": units,
        "revert": [units[row]],
        "transplant": units[:row] + units[row + 1 :],
        "revert_from": units[row:],
        "revert_through": units[: row + 1],
    }
    if variant not in chosen:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    return frozenset(chosen[variant])


@contextlib.contextmanager
def swapped(model: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Copy ``weights`` (parameter name → tensor) into ``model`` inside the block, then copy
    the originals back: the model object ends exactly as it started."""
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in weights}
    try:
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def base_weights(base: nn.Module, layout: LayerParameters) -> dict[str, torch.Tensor]:
    """Detached copies of the base model's parameters of every unit (not the unused ones)."""
    params = dict(base.named_parameters())
    return {name: params[name].detach().clone() for name in layout.names(layout.rows())}


def _replayer(model: nn.Module) -> PrefixReplay | None:
    """Replay of shared layers for ``model`` (:mod:`.replay`); None where its layer sites
    cannot be found, and every variant is then scored in full."""
    try:
        return PrefixReplay(model)
    except (SiteNotFoundError, ValueError) as error:
        logger.warning("layer reversion scores every variant in full: %s", error)
        return None


def reversion_values(
    final: nn.Module,
    base: dict[str, torch.Tensor],
    layout: LayerParameters,
    evaluate: Evaluate,
) -> np.ndarray:
    """Accuracy and loss of every variant at every unit: shape (L + 2, variant, quantity).

    ``final`` is the fine-tuned classifier (left unchanged), ``base`` the base weights of
    every unit (:func:`base_weights`), ``evaluate`` one pass over the validation split
    returning (accuracy, loss); it must use the same batches, in the same order, on every
    call. Each distinct set of reverted units costs one pass, less the layers it shares
    with the variant scored before it (:mod:`.replay`).
    """
    units = layout.rows()
    wanted = {
        (row, v): reverted_units(variant, row, units)
        for row in range(len(units))
        for v, variant in enumerate(VARIANTS)
    }
    distinct = list(dict.fromkeys(wanted.values()))
    keys = [tuple(unit in reverted for unit in units) for reverted in distinct]
    plan = replay_plan(keys, layout.num_layers)
    replayer = _replayer(final)
    scores: dict[frozenset, tuple[float, float]] = {}
    with replayer.installed() if replayer else contextlib.nullcontext():
        for pos in tqdm(range(len(distinct)), desc="layer reversion", unit="variant"):
            reverted = distinct[plan.order[pos]]
            names = layout.names(sorted(reverted, key=units.index))
            with swapped(final, {name: base[name] for name in names}):
                if replayer is None:
                    scores[reverted] = evaluate(final)
                else:
                    scores[reverted] = replayer.score(evaluate, plan.replay[pos], plan.record[pos])
    values = np.empty((len(units), len(VARIANTS), len(QUANTITIES)))
    for (row, v), reverted in wanted.items():
        values[row, v] = scores[reverted]
    logger.info("layer reversion: %d variants over %d units", len(distinct), len(units))
    return values
