"""The data of the explorer page: every results group, the probe tokens, the latents.

Everything is packed into one JSON object that the page inlines. Large arrays travel as
base64 of little-endian typed arrays (``{"dtype", "shape", "b64"}``); the token-level ones
are quantised, and very large probe sets subsampled, by the rule in :data:`RULES`, which the
page states.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import xarray as xr

from layerdrift.config import FeaturesConfig
from layerdrift.storage.results import list_results, open_result
from layerdrift.storage.results_schema import RESULT_GROUPS
from layerdrift.tasks.report.latents import CONTEXT, HIST_BINS, TOP, LatentTable
from layerdrift.tasks.report.load import ReportInputs, checkpoint_order

MAX_TOKENS = 200_000
MAX_GROUP_VALUES = 200_000
SUBSAMPLE_SEED = 0
RULES = (
    "Drift (1 − cosine to base) of every probe token is kept at every checkpoint and layer, "
    "rounded to 256 levels between 0 and the run's largest drift.",
    f"Probe sets of more than {MAX_TOKENS:,} tokens are subsampled: every example a latent "
    "shows, then a seeded random choice of the others, up to that many tokens.",
    "Latent activations in example windows are rounded to 256 levels of the latent's largest "
    "activation; histogram counts stop at 65,535; probabilities have 3 decimals.",
)


def packed(array: np.ndarray, dtype: str) -> dict:
    """``array`` as ``{"dtype", "shape", "b64"}`` (little-endian ``dtype``)."""
    data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(data.shape), "b64": base64.b64encode(data).decode()}


def rounded(values: np.ndarray, digits: int = 4) -> list:
    """Floats to ``digits`` decimals for JSON, NaN and infinities as null."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return [round(float(v), digits) if math.isfinite(v) else None for v in flat]


def significant(values: np.ndarray, digits: int = 7) -> list:
    """Floats to ``digits`` significant digits (float32 precision) for JSON; NaN as null."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in flat]


def quantised(values: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """``values / scale`` on 256 levels (uint8); 0 where the scale is 0."""
    scale = np.asarray(scale, dtype=np.float64)
    ratio = np.divide(values, scale, out=np.zeros(np.shape(values)), where=scale > 0)
    return np.clip(np.rint(np.nan_to_num(ratio) * 255), 0, 255).astype(np.uint8)


def labels_json(labels: np.ndarray) -> list:
    """Coordinate labels for JSON: floats to 7 significant digits, numbers as numbers."""
    if labels.dtype.kind == "f":
        return significant(labels)
    return [v.item() if hasattr(v, "item") else str(v) for v in labels]


def group_entry(name: str, array: xr.DataArray) -> dict | None:
    """One results group for the page: dims, labels, flat values and its schema entry."""
    if array.size > MAX_GROUP_VALUES or {"token", "example"} & set(array.dims):
        return None
    declared = RESULT_GROUPS.get(name)
    coords = {}
    for dim in array.dims:
        labels = array[dim].values if dim in array.coords else np.arange(array.sizes[dim])
        coords[dim] = labels_json(labels)
    # Sorted: zarr may list a group's non-dim coordinates in any order, and the page
    # must come out byte-identical for the same run.
    for key, coord in sorted(array.coords.items(), key=lambda item: str(item[0])):
        if key not in array.dims and coord.ndim == 1:
            coords[str(key)] = labels_json(coord.values)
    if "checkpoint" in coords:  # training order, whatever order the writer used
        order = sorted(coords["checkpoint"], key=checkpoint_order)
        array = array.sel(checkpoint=order)
        coords["checkpoint"] = order
    return {
        "name": name,
        "dims": [str(d) for d in array.dims],
        "coords": coords,
        "values": significant(array.values),
        "stage": declared.stage if declared else "",
        "description": declared.description if declared else "",
    }


def kept_examples(n_examples: int, counts: np.ndarray, required: set[int]) -> np.ndarray:
    """Examples whose tokens the page holds (sorted): all, or ``required`` plus a seeded
    random choice of the others within :data:`MAX_TOKENS` tokens."""
    if counts.sum() <= MAX_TOKENS:
        return np.arange(n_examples)
    keep = sorted(required)
    budget = MAX_TOKENS - int(counts[keep].sum())
    others = np.setdiff1d(np.arange(n_examples), keep)
    for e in np.random.default_rng(SUBSAMPLE_SEED).permutation(others):
        if counts[e] > budget:
            continue
        keep.append(int(e))
        budget -= int(counts[e])
    return np.sort(np.asarray(keep, dtype=np.int64))


def token_data(store: xr.Dataset, drift: xr.DataArray | None, keep: np.ndarray) -> dict:
    """Examples (text, label, token range) and their tokens and drift [checkpoint, layer, token]."""
    starts = np.asarray(store.token_start.values)[keep]
    counts = np.asarray(store.token_count.values)[keep]
    index = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
    out = {
        "examples": {
            "id": keep.tolist(),
            "text": [str(t) for t in store.text.values[keep]],
            "label": [int(v) for v in store.label.values[keep]],
            "count": counts.tolist(),
        },
        "tokens": [str(t) for t in store.token_text.values[index]],
        "drift": None,
    }
    if drift is not None:
        order = sorted((str(c) for c in drift.checkpoint.values), key=checkpoint_order)
        values = drift.sel(checkpoint=order).values[:, :, index].astype(np.float64)
        scale = max(float(np.nanmax(values)), 1e-12)
        out["drift"] = {
            "checkpoints": order,
            "layers": [int(v) for v in drift.layer.values],
            "scale": scale,
            "q": packed(quantised(np.clip(values, 0, None), scale), "uint8"),
        }
    return out


def latent_entry(table: LatentTable) -> dict:
    """One dictionary at one layer for the page (see :class:`LatentTable`)."""
    entry = {
        "source": table.source,
        "layer": table.layer,
        "d_sae": int(table.auroc.shape[0]),
        "auroc": rounded(table.auroc),
        "density": significant(table.density, 4),
        "max": significant(table.max_act, 5),
        "examples": packed(table.examples, "int32"),
        "peaks": packed(table.peaks, "uint16"),
        "windows": packed(quantised(table.windows, table.max_act[:, None, None]), "uint8"),
        "hist": packed(np.minimum(table.hist, 65_535), "uint16"),
    }
    for key in ("partner", "partner_cosine", "relative_norm", "group"):
        value = getattr(table, key)
        if value is None:
            entry[key] = None
        elif value.dtype.kind in "iu":
            entry[key] = [int(v) for v in value]
        else:
            entry[key] = rounded(value)
    return entry


def predictions_data(probs: xr.DataArray | None, keep: np.ndarray) -> dict | None:
    """Class probabilities [checkpoint][kept example][class], 3 decimals."""
    if probs is None:
        return None
    order = sorted((str(c) for c in probs.checkpoint.values), key=checkpoint_order)
    values = probs.sel(checkpoint=order).values[:, keep]
    return {
        "checkpoints": order,
        "p": [[rounded(row, 3) for row in per_ckpt] for per_ckpt in values],
    }


def explorer_data(
    inputs: ReportInputs,
    store: xr.Dataset | None,
    probs: xr.DataArray | None,
    tables: list[LatentTable],
    drift: xr.DataArray | None = None,
) -> dict:
    """The page's whole data object (JSON-ready).

    ``drift`` (checkpoint, layer, token) defaults to the run's ``drift`` group.
    """
    run, config = inputs.run, inputs.config
    features = config.features if config else FeaturesConfig()
    groups = []
    for name in list_results(run.results()):
        entry = group_entry(name, open_result(run.results(), name)[name].load())
        if entry is not None:
            groups.append(entry)
    data = {
        "run": {
            "name": config.name if config else run.url,
            "model": config.model if config else "",
            "dataset": config.data.dataset if config else "",
            "config_hash": config.config_hash() if config else "",
            "label_names": inputs.label_names,
            "base": config.features.base if config else "base",
            "finetuned": config.features.finetuned if config else "final",
        },
        "rules": list(RULES),
        "groups": groups,
        "probe": None,
        "latents": {
            "top": TOP,
            "context": CONTEXT,
            "hist_bins": HIST_BINS,
            "groups": list(RESULT_GROUPS["crosscoder_counts"].labels["group"]),
            "auroc_high": features.auroc_high,
            "auroc_low": features.auroc_low,
            "tables": [latent_entry(t) for t in tables],
        },
    }
    if store is not None:
        required = {int(e) for t in tables for e in np.unique(t.examples) if e >= 0}
        counts = np.asarray(store.token_count.values)
        keep = kept_examples(len(counts), counts, required)
        if drift is None and inputs.has("drift"):
            drift = open_result(run.results(), "drift")["drift"]
        data["probe"] = token_data(store, drift, keep)
        data["probe"]["predictions"] = predictions_data(probs, keep)
        data["probe"]["subsampled"] = bool(len(keep) < len(counts))
    return data
