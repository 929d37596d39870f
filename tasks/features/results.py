"""Writing the per-layer comparisons into ``results.zarr`` and the feature cards file.

Groups (one per variable, labelled dims; read with ``storage.results.open_result``):

- ``crosscoder_counts`` (layer, group): live crosscoder latents per group
  (``base_only``, ``shared``, ``finetuned_only``); ``crosscoder_surviving`` (layer, group):
  the exclusive ones (``base_only``, ``finetuned_only``) that pass Latent Scaling (-1 for a
  layer compared before the check existed); ``crosscoder_dead`` (layer);
  ``relative_norm_deviation`` (layer): ``2 · mean |r - 0.5|`` of the live latents' relative
  decoder norms, 0 all shared alike, 1 all exclusive;
- ``matched_fraction`` (layer): share of live fine-tuned SAE latents whose one-to-one
  (Hungarian) partner among the live base SAE latents has decoder cosine >= the threshold;
  ``best_match_fraction`` (layer): the same with each latent's best cosine;
  ``matched_fraction_control`` (layer): the same for a control SAE of the base model (another
  seed and token order, same budget) against the base SAE: what "no change" reads;
- ``transfer_fvu_control`` (layer): FVU of that control SAE on the base activations, the
  value ``finetuned_on_base`` would have if fine-tuning changed nothing;
- ``task_specific_fraction`` (source, layer): share of live latents with AUROC >= high or
  <= low, source in base_sae, finetuned_sae, crosscoder_{base_only,shared,finetuned_only};
- ``transfer_fvu`` and ``transfer_accuracy_recovered`` (direction, layer), direction in
  base_on_finetuned, finetuned_on_base, base_on_base, finetuned_on_finetuned;
- ``crosscoder_fvu`` (model, layer);
- ``matched_fraction_ci``, ``matched_fraction_control_ci`` (layer, bound),
  ``task_specific_fraction_ci`` (source, layer, bound) and ``crosscoder_share_ci`` (layer,
  group, bound; the share of live latents in each group): 95% intervals over resampled
  latents (:mod:`.intervals`), ``bound`` = ``low``, ``high``;
- ``transfer_fvu_ci`` (direction, layer, bound) and ``transfer_fvu_control_ci`` (layer,
  bound): 95% intervals of the FVUs over resampled held-out probe examples;
- ``match_cosine_hist`` (layer, match[best, hungarian], bin), ``relative_norm_hist``
  (layer, bin) and ``auroc_hist`` (dictionary, layer, bin): counts, with ``bin`` the lower
  edge and ``bin_upper`` the upper edge of each bin on [0, 1].
"""

from __future__ import annotations

import json
import math

import numpy as np
import xarray as xr

from layerdrift.storage.results import write_result
from layerdrift.storage.rundir import CARDS_PATH, RunDir
from layerdrift.tasks.features.compare import SOURCES
from layerdrift.tasks.features.crosscoder import GROUPS
from layerdrift.tasks.features.latent_scaling import OWNER
from layerdrift.tasks.features.transfer import DIRECTIONS

MODELS = ("base", "finetuned")
MATCHES = ("best", "hungarian")
BOUNDS = ("low", "high")


def _by_layer(per_layer: list[dict], key: str, labels: tuple[str, ...]) -> np.ndarray:
    """[len(labels), n_layers] float array of ``layer_result[key][label]``."""
    return np.array([[float(r.get(key, {}).get(lab, np.nan)) for r in per_layer] for lab in labels])


def _hist(values: np.ndarray, bins: int, dims: tuple[str, ...], coords: dict) -> xr.DataArray:
    edges = np.linspace(0.0, 1.0, bins + 1)
    coords = {**coords, "bin": edges[:-1], "bin_upper": ("bin", edges[1:])}
    return xr.DataArray(values.astype(np.int64), dims=dims, coords=coords)


def _json_safe(obj):
    """NaN and infinities as null, so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _attrs(per_layer: list[dict]) -> dict:
    """Attributes of every group: the two checkpoints, the store and the thresholds used."""
    first = per_layer[0]
    attrs = {"base": first["checkpoints"][0], "finetuned": first["checkpoints"][1]}
    attrs["store_generation"] = first.get("store_generation", "")
    config = first.get("config", {})
    attrs |= {k: config[k] for k in config if k.endswith(("_below", "_above", "threshold"))}
    attrs |= {k: config[k] for k in ("auroc_high", "auroc_low") if k in config}
    return attrs


def _per_layer_groups(per_layer: list[dict], lay: dict) -> dict[str, xr.DataArray]:
    """Counts, fractions and FVUs: one value per layer (and source, direction, model)."""
    counts = np.array([[r["crosscoder_counts"][g] for g in GROUPS] for r in per_layer])

    def column(key: str, default=None) -> xr.DataArray:
        return xr.DataArray([r.get(key, default) for r in per_layer], dims="layer")

    def table(key: str, dim: str, labels: tuple[str, ...]) -> xr.DataArray:
        values = _by_layer(per_layer, key, labels)
        return xr.DataArray(values, dims=(dim, "layer"), coords={dim: list(labels), **lay})

    surviving = np.array(
        [[r.get("crosscoder_surviving", {}).get(g, -1) for g in OWNER] for r in per_layer]
    )
    return {
        "crosscoder_counts": xr.DataArray(
            counts, dims=("layer", "group"), coords={**lay, "group": list(GROUPS)}
        ),
        "crosscoder_surviving": xr.DataArray(
            surviving, dims=("layer", "group"), coords={**lay, "group": list(OWNER)}
        ),
        "crosscoder_dead": column("crosscoder_dead"),
        "relative_norm_deviation": column("relative_norm_deviation", np.nan),
        "matched_fraction": column("matched_fraction"),
        "best_match_fraction": column("best_match_fraction"),
        "matched_fraction_control": column("matched_fraction_control", np.nan),
        "transfer_fvu_control": column("transfer_fvu_control", np.nan),
        "task_specific_fraction": table("task_specific_fraction", "source", SOURCES),
        "transfer_fvu": table("transfer_fvu", "direction", DIRECTIONS),
        "transfer_accuracy_recovered": table(
            "transfer_accuracy_recovered", "direction", DIRECTIONS
        ),
        "crosscoder_fvu": table("crosscoder_fvu", "model", MODELS),
    }


def _interval(values: list, dims: tuple[str, ...], coords: dict) -> xr.DataArray:
    """A ``*_ci`` group: ``values`` with a trailing ``bound`` dim (``low``, ``high``)."""
    array = np.array(values, dtype=np.float64)
    return xr.DataArray(array, dims=(*dims, "bound"), coords={**coords, "bound": list(BOUNDS)})


def _interval_groups(per_layer: list[dict], lay: dict) -> dict[str, xr.DataArray]:
    """95% intervals over resampled latents, and the FVUs' over resampled held-out examples
    (:mod:`.intervals`); NaN for layers compared before they existed."""
    nan2 = [float("nan")] * 2

    def per_label(key: str, labels) -> list:
        return [[r.get(key, {}).get(lab, nan2) for r in per_layer] for lab in labels]

    return {
        "matched_fraction_ci": _interval(
            [r.get("matched_fraction_ci", nan2) for r in per_layer], ("layer",), lay
        ),
        "matched_fraction_control_ci": _interval(
            [r.get("matched_fraction_control_ci", nan2) for r in per_layer], ("layer",), lay
        ),
        "task_specific_fraction_ci": _interval(
            per_label("task_specific_fraction_ci", SOURCES),
            ("source", "layer"),
            {"source": list(SOURCES), **lay},
        ),
        "crosscoder_share_ci": _interval(
            np.swapaxes(np.array(per_label("crosscoder_share_ci", GROUPS)), 0, 1).tolist(),
            ("layer", "group"),
            {**lay, "group": list(GROUPS)},
        ),
        "transfer_fvu_ci": _interval(
            per_label("transfer_fvu_ci", DIRECTIONS),
            ("direction", "layer"),
            {"direction": list(DIRECTIONS), **lay},
        ),
        "transfer_fvu_control_ci": _interval(
            [r.get("transfer_fvu_control_ci", nan2) for r in per_layer], ("layer",), lay
        ),
    }


def _histogram_groups(per_layer: list[dict], lay: dict) -> dict[str, xr.DataArray]:
    """The match-cosine, relative-norm and AUROC histograms."""
    bins = int(per_layer[0]["hist_bins"])
    dictionaries = list(per_layer[0]["auroc_hist"])
    cosines = np.array([[r["match_cosine_hist"][m] for m in MATCHES] for r in per_layer])
    norms = np.array([r["relative_norm_hist"] for r in per_layer])
    aurocs = np.array([[r["auroc_hist"][d] for r in per_layer] for d in dictionaries])
    return {
        "match_cosine_hist": _hist(
            cosines, bins, ("layer", "match", "bin"), {**lay, "match": list(MATCHES)}
        ),
        "relative_norm_hist": _hist(norms, bins, ("layer", "bin"), lay),
        "auroc_hist": _hist(
            aurocs, bins, ("dictionary", "layer", "bin"), {"dictionary": dictionaries, **lay}
        ),
    }


def feature_datasets(per_layer: list[dict]) -> dict[str, xr.DataArray]:
    """The results groups of :mod:`tasks.features.results` from per-layer result dicts."""
    per_layer = sorted(per_layer, key=lambda r: r["layer"])
    layers = [int(r["layer"]) for r in per_layer]
    lay, attrs = {"layer": layers}, _attrs(per_layer)
    out = _per_layer_groups(per_layer, lay) | _histogram_groups(per_layer, lay)
    out |= _interval_groups(per_layer, lay)
    for name, array in out.items():
        if "layer" not in array.coords:
            array = array.assign_coords(layer=layers)
        # Variable-length strings: Zarr v3 has no stable spec for fixed-width unicode.
        text = {k: v.values.astype(object) for k, v in array.coords.items() if v.dtype.kind == "U"}
        out[name] = array.assign_coords(text).assign_attrs(attrs)
    return out


def write_feature_results(run: RunDir, per_layer: list[dict]) -> None:
    """Write every feature group into ``results.zarr`` and ``features/cards.json``."""
    if not per_layer:
        raise ValueError("no per-layer feature comparisons to write: run the compare tasks first")
    for name, array in feature_datasets(per_layer).items():
        write_result(run.results(), name, array)
    cards = [card for r in sorted(per_layer, key=lambda r: r["layer"]) for card in r["cards"]]
    run.write_text(json.dumps(_json_safe(cards), indent=1, allow_nan=False), *CARDS_PATH)
