"""The smallest set of layers whose fine-tuning recovers most of the accuracy gain.

Read from the ``layer_reversion`` curves alone, no further forward pass: each variant there
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


@dataclass(frozen=True)
class Recommendation:
    """Train ``layers`` (layer indices; L + 1 is the head), named ``units``; the rest can
    stay frozen at base. ``recovered`` is (accuracy − base) / (final − base) of that model,
    ``evidence`` the reversion variant it was read from."""

    layers: tuple[int, ...]
    units: tuple[str, ...]
    accuracy: float
    recovered: float
    evidence: str
    base_accuracy: float
    final_accuracy: float
    target: float


def recommend(reversion: xr.DataArray, target: float = TARGET) -> Recommendation | None:
    """The recommendation from a ``layer_reversion`` array (layer, variant, quantity).

    None when fine-tuning did not raise validation accuracy (nothing to recover).
    """
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
