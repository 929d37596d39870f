"""The smallest set of layers whose fine-tuning recovers most of the accuracy gain.

From the freeze grid when the run has one: each k there is a real fine-tune of layers
k + 1 … L and the head (layers 0 … k frozen), so the recommendation is the largest k whose
accuracy recovers at least ``target`` of the gain from base to the full fine-tune.

Otherwise from the ``layer_reversion`` curves alone, no further forward pass: each variant there
is base with some units fine-tuned, so every row offers a candidate set of trained units —
one unit (``transplant``), the units before it (``revert_from``: the rest reverted) and the
units after it (``revert_through``). The recommendation is the smallest candidate whose
accuracy recovers at least ``target`` of the gain from base to final (ties: the larger
recovery). Sets that are neither one unit nor a contiguous run from either end are not
tried, so a smaller scattered set may exist; the report says which evidence was used.
"""

from __future__ import annotations

from dataclasses import dataclass

import xarray as xr

TARGET = 0.95
# How each variant's row r maps to the units left fine-tuned (units in forward order).
EVIDENCE = {
    "transplant": lambda units, r: units[r : r + 1],
    "revert_from": lambda units, r: units[:r],
    "revert_through": lambda units, r: units[r + 1 :],
}
FREEZE_GRID = "freeze_grid"  # the evidence named when the freeze grid was read


@dataclass(frozen=True)
class Recommendation:
    """Train ``layers`` (layer indices; L + 1 is the head), named ``units``; the rest can
    stay frozen at base. ``recovered`` is (accuracy − base) / (final − base) of that model,
    ``evidence`` the reversion variant it was read from, or ``freeze_grid``."""

    layers: tuple[int, ...]
    units: tuple[str, ...]
    accuracy: float
    recovered: float
    evidence: str
    base_accuracy: float
    final_accuracy: float
    target: float


def recommend(
    reversion: xr.DataArray, target: float = TARGET, freeze_grid: xr.DataArray | None = None
) -> Recommendation | None:
    """The recommendation from the ``freeze_grid`` array (freeze_k, quantity) when given and
    holding at least one k, else from a ``layer_reversion`` array (layer, variant, quantity).

    None when fine-tuning did not raise validation accuracy (nothing to recover).
    """
    if freeze_grid is not None and (freeze_grid["frozen_through"] >= 0).any():
        names = tuple(str(v) for v in reversion["unit"].values)
        return from_freeze_grid(freeze_grid, names, target)
    accuracy = reversion.sel(quantity="accuracy")
    base = float(accuracy.sel(variant="base").isel(layer=0))
    final = float(accuracy.sel(variant="final").isel(layer=0))
    if not final > base:
        return None
    layers = [int(v) for v in reversion.layer.values]
    names = [str(v) for v in reversion["unit"].values]
    best = None
    for variant, trained in EVIDENCE.items():
        for row in range(len(layers)):
            chosen = trained(list(range(len(layers))), row)
            acc = float(accuracy.sel(variant=variant).isel(layer=row))
            recovered = (acc - base) / (final - base)
            if recovered < target or not chosen:
                continue
            key = (len(chosen), -recovered)
            if best is None or key < best[0]:
                best = (key, chosen, acc, recovered, variant)
    if best is None:  # only the full fine-tune recovers enough
        best = (None, list(range(len(layers))), final, 1.0, "final")
    _, chosen, acc, recovered, variant = best
    return Recommendation(
        layers=tuple(layers[i] for i in chosen),
        units=tuple(names[i] for i in chosen),
        accuracy=acc,
        recovered=recovered,
        evidence=variant,
        base_accuracy=base,
        final_accuracy=final,
        target=target,
    )


def from_freeze_grid(
    grid: xr.DataArray, units: tuple[str, ...], target: float = TARGET
) -> Recommendation | None:
    """The recommendation from a ``freeze_grid`` array: train layers k + 1 … L + 1 (the head)
    for the largest k that recovers ``target`` of the gain, or every unit when none does.

    ``units`` names layers 0 … L + 1; the base accuracy is the grid's ``base_accuracy``
    attribute, the full fine-tune its ``none`` row (``frozen_through`` −1).
    """
    accuracy = grid.sel(quantity="accuracy")
    through = [int(v) for v in grid["frozen_through"].values]
    base = float(grid.attrs["base_accuracy"])
    final = float(accuracy.values[through.index(-1)])
    if not final > base:
        return None
    chosen, acc, recovered = -1, final, 1.0  # nothing frozen: the full fine-tune
    for k, value in sorted(zip(through, accuracy.values.tolist(), strict=True)):
        if k >= 0 and (value - base) / (final - base) >= target:
            chosen, acc, recovered = k, value, (value - base) / (final - base)
    layers = tuple(range(chosen + 1, len(units)))
    return Recommendation(
        layers=layers,
        units=tuple(units[i] for i in layers),
        accuracy=acc,
        recovered=recovered,
        evidence=FREEZE_GRID,
        base_accuracy=base,
        final_accuracy=final,
        target=target,
    )
