"""What ``results.zarr`` holds: one entry per group, with dims, coordinates, dtype and writer.

Each group of the results store holds one variable of the same name (see
:mod:`storage.results`). :data:`RESULT_GROUPS` declares every group the pipeline writes;
:func:`storage.results.write_result` checks a declared group against its entry before
writing, and the report, the explorer, ``layerdrift show`` and the tests read the entries
instead of spelling dims and labels again.

Adding a group is one :class:`ResultGroup` entry in :data:`RESULT_GROUPS`. Readers handle
groups generically: a group with a ``layer`` dim is drawn as per-layer curves, one with a
``bin`` dim as histograms, one with ``layer_other`` as a layer × layer matrix, and a group
``<name>_ci`` with a ``bound`` dim (labels ``low``, ``high``) as the interval band of
``<name>``. Groups that are not declared are written unchecked and shown as tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import xarray as xr

DTYPE_KINDS = {"float": "f", "int": "iu", "bool": "b"}


class ResultSchemaError(ValueError):
    """A results group does not match its declared dims, coordinates or dtype."""


@dataclass(frozen=True)
class ResultGroup:
    """One group of ``results.zarr``: its variable's dims, labels, dtype and writer.

    ``labels`` gives, for dims with a fixed vocabulary, the labels readers may rely on: a
    written group must hold every one of them (it may hold more). ``coords`` names the
    non-dimension coordinates the group carries, each with its dims. ``dtype`` is ``float``,
    ``int`` or ``bool`` (any width).
    """

    name: str
    dims: tuple[str, ...]
    dtype: str
    stage: str
    description: str
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    coords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_KINDS:
            raise ValueError(f"group {self.name}: dtype must be one of {sorted(DTYPE_KINDS)}")
        unknown = (set(self.labels) | {d for ds in self.coords.values() for d in ds}) - set(
            self.dims
        )
        if unknown:
            raise ValueError(f"group {self.name}: labels or coords on unknown dims {unknown}")
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "coords", MappingProxyType(dict(self.coords)))

    def problems(self, array: xr.DataArray) -> list[str]:
        """What in ``array`` differs from this entry (empty when it matches)."""
        found = []
        if tuple(array.dims) != self.dims:
            found.append(f"dims {tuple(array.dims)}, expected {self.dims}")
        if array.dtype.kind not in DTYPE_KINDS[self.dtype]:
            found.append(f"dtype {array.dtype}, expected {self.dtype}")
        for dim, labels in self.labels.items():
            if dim not in array.dims:
                continue
            have = {str(v) for v in array[dim].values} if dim in array.coords else set()
            lacking = [label for label in labels if label not in have]
            if lacking:
                found.append(f"{dim} lacks labels {lacking}")
        for name, dims in self.coords.items():
            if name not in array.coords:
                found.append(f"no coordinate {name!r}")
            elif tuple(array[name].dims) != dims:
                found.append(f"coordinate {name!r} on dims {tuple(array[name].dims)}, not {dims}")
        return found

    def validate(self, data: xr.DataArray | xr.Dataset) -> None:
        """Raise :class:`ResultSchemaError` naming the group and every mismatch."""
        if isinstance(data, xr.Dataset):
            if self.name not in data.data_vars:
                raise ResultSchemaError(
                    f"results group {self.name!r}: the dataset has no variable {self.name!r} "
                    f"(it has {sorted(map(str, data.data_vars))})"
                )
            data = data[self.name]
        found = self.problems(data)
        if found:
            raise ResultSchemaError(
                f"results group {self.name!r} (written by the {self.stage} stage) does not "
                f"match storage/results_schema.py: {'; '.join(found)}"
            )

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The array shape for dim ``sizes``; fixed-label dims default to their labels."""
        return tuple(
            sizes[d] if d in sizes else len(self.labels[d]) if d in self.labels else _need(self, d)
            for d in self.dims
        )

    def new(self, values: np.ndarray, **coords) -> xr.DataArray:
        """A DataArray of this group from ``values`` (in :attr:`dims` order) and coordinates.

        Fixed-label dims not given in ``coords`` take the declared labels. The result is
        validated, so a wrong shape or dtype fails here, before anything is written.
        """
        dim_coords = {d: list(self.labels[d]) for d in self.labels if d not in coords}
        array = xr.DataArray(values, dims=self.dims, coords={**dim_coords, **coords})
        self.validate(array)
        return array


def _need(group: ResultGroup, dim: str) -> int:
    raise ValueError(f"group {group.name}: give the size of dim {dim!r}")


_SIM_METRICS = (
    "cosine", "linear_cka", "debiased_cka", "svcca", "pwcca", "procrustes", "norm_ratio",
)  # fmt: skip
_SAE_METRICS = (
    "mse", "fvu", "explained_variance", "l0", "dead_fraction", "accuracy_recovered",
    "loss_recovered",
)  # fmt: skip
_RECOVERY = (
    "accuracy_clean", "accuracy_sae", "accuracy_mean", "loss_clean", "loss_sae", "loss_mean",
)  # fmt: skip
_SOURCES = (
    "base_sae", "finetuned_sae", "crosscoder_base_only", "crosscoder_shared",
    "crosscoder_finetuned_only",
)  # fmt: skip
_BIN = {"bin_upper": ("bin",)}
_BOUNDS = ("low", "high")
_DIRECTIONS = ("base_on_finetuned", "finetuned_on_base", "base_on_base", "finetuned_on_finetuned")
_TOKEN_COORDS = {
    "token_id": ("token",),
    "token_text": ("token",),
    "example_of_token": ("token",),
    "position": ("token",),
    "is_special": ("token",),
}

_ENTRIES = (
    # similarity stage
    ResultGroup(
        "similarity",
        ("reference", "checkpoint", "layer", "metric"),
        "float",
        "similarity",
        "similarity of each checkpoint to a reference (base, previous; random, a seeded "
        "random copy of the model, with similarity.random_floor) per layer; procrustes is a "
        "distance (0 = equal up to rotation)",
        labels={"reference": ("base", "previous"), "metric": _SIM_METRICS},
    ),
    ResultGroup(
        "layer_similarity",
        ("checkpoint", "layer", "layer_other", "metric"),
        "float",
        "similarity",
        "every layer against every other layer, within base and within final",
        labels={"metric": _SIM_METRICS},
    ),
    ResultGroup(
        "drift",
        ("checkpoint", "layer", "token"),
        "float",
        "similarity",
        "per-token drift 1 − cos(h_checkpoint, h_base), aligned with the activation store",
        coords=_TOKEN_COORDS,
    ),
    ResultGroup(
        "similarity_ci",
        ("reference", "checkpoint", "layer", "metric", "bound"),
        "float",
        "similarity",
        "95% bootstrap interval of each similarity over groups of probe examples",
        labels={"reference": ("base", "previous"), "metric": _SIM_METRICS, "bound": _BOUNDS},
    ),
    ResultGroup(
        "cross_similarity",
        ("pair", "layer", "metric"),
        "float",
        "similarity",
        "a run of several tasks: every two tasks' final checkpoints (X = first, Y = second) "
        "at the same layer; kind says what differs between them (task, method or seed)",
        labels={"metric": _SIM_METRICS},
        coords={"first": ("pair",), "second": ("pair",), "kind": ("pair",)},
    ),
    ResultGroup(
        "cross_similarity_ci",
        ("pair", "layer", "metric", "bound"),
        "float",
        "similarity",
        "95% bootstrap interval of each cross_similarity over groups of probe examples",
        labels={"metric": _SIM_METRICS, "bound": _BOUNDS},
        coords={"first": ("pair",), "second": ("pair",), "kind": ("pair",)},
    ),
    ResultGroup(
        "probe_accuracy",
        ("checkpoint", "layer", "pooling"),
        "float",
        "similarity",
        "cross-validated accuracy of a linear probe on pooled hidden states",
        labels={"pooling": ("mean", "cls")},
    ),
    ResultGroup(
        "probe_control_accuracy",
        ("checkpoint", "layer", "pooling"),
        "float",
        "similarity",
        "the same probe on permuted labels (a control task): selectivity = accuracy − this",
        labels={"pooling": ("mean", "cls")},
    ),
    ResultGroup(
        "majority_rate",
        (),
        "float",
        "similarity",
        "share of the most frequent probe label (the accuracy of always guessing it)",
    ),
    # sae stage
    ResultGroup(
        "sae_metrics",
        ("checkpoint", "layer", "metric"),
        "float",
        "sae",
        "held-out reconstruction and sparsity of each SAE",
        labels={"metric": _SAE_METRICS},
    ),
    ResultGroup(
        "sae_recovery",
        ("checkpoint", "layer", "quantity"),
        "float",
        "sae",
        "classifier accuracy and loss with the SAE's reconstruction spliced in",
        labels={"quantity": _RECOVERY},
    ),
    ResultGroup(
        "latent_density",
        ("checkpoint", "layer", "bin"),
        "int",
        "sae",
        "latents per bin of log10 held-out firing frequency (first bin: never fires)",
        coords=_BIN,
    ),
    # features stage
    ResultGroup(
        "task_features",
        ("checkpoint", "layer", "quantity"),
        "float",
        "features",
        "a run of several tasks: base against each task final (checkpoint), per layer: "
        "matched fractions (and control), transfer FVUs (and control), crosscoder latents "
        "per group and those surviving Latent Scaling, accuracy recovered by the base SAE",
        labels={
            "quantity": (
                "matched_fraction",
                "matched_fraction_control",
                "transfer_fvu_finetuned_on_base",
                "transfer_fvu_base_on_finetuned",
                "transfer_fvu_control",
                "crosscoder_base_only",
                "crosscoder_shared",
                "crosscoder_finetuned_only",
                "surviving_base_only",
                "surviving_finetuned_only",
                "accuracy_recovered_base_on_finetuned",
            )
        },
        coords={"task": ("checkpoint",), "seed": ("checkpoint",), "method": ("checkpoint",)},
    ),
    ResultGroup(
        "crosscoder_counts",
        ("layer", "group"),
        "int",
        "features",
        "live crosscoder latents per group of relative decoder norm",
        labels={"group": ("base_only", "shared", "finetuned_only")},
    ),
    ResultGroup(
        "crosscoder_surviving",
        ("layer", "group"),
        "int",
        "features",
        "exclusive crosscoder latents whose Latent Scaling ratios (Minder et al. 2025) are "
        "both below features.scaling_ratio_below: the exclusives that hold up",
        labels={"group": ("base_only", "finetuned_only")},
    ),
    ResultGroup("crosscoder_dead", ("layer",), "int", "features", "dead crosscoder latents"),
    ResultGroup(
        "relative_norm_deviation",
        ("layer",),
        "float",
        "features",
        "crosscoder lean 2·mean|r − ½| over live latents (0 all shared, 1 all exclusive)",
    ),
    ResultGroup(
        "matched_fraction",
        ("layer",),
        "float",
        "features",
        "share of live final-SAE latents whose one-to-one base partner has cosine ≥ threshold",
    ),
    ResultGroup(
        "best_match_fraction",
        ("layer",),
        "float",
        "features",
        "the same with each latent's best cosine instead of the one-to-one partner",
    ),
    ResultGroup(
        "matched_fraction_control",
        ("layer",),
        "float",
        "features",
        "matched_fraction of a control SAE of base (another seed and token order, same "
        "budget) against the base SAE: what no change reads at this budget",
    ),
    ResultGroup(
        "transfer_fvu_control",
        ("layer",),
        "float",
        "features",
        "FVU of the control SAE on base activations: finetuned_on_base if nothing changed",
    ),
    ResultGroup(
        "task_specific_fraction",
        ("source", "layer"),
        "float",
        "features",
        "share of live latents with AUROC ≥ high or ≤ low against the label",
        labels={"source": _SOURCES},
    ),
    ResultGroup(
        "transfer_fvu",
        ("direction", "layer"),
        "float",
        "features",
        "FVU of each SAE on each model's activations (<sae>_on_<model>)",
        labels={"direction": _DIRECTIONS},
    ),
    ResultGroup(
        "transfer_accuracy_recovered",
        ("direction", "layer"),
        "float",
        "features",
        "fine-tuned classifier accuracy recovered with each SAE spliced in",
        labels={"direction": _DIRECTIONS},
    ),
    ResultGroup(
        "crosscoder_fvu",
        ("model", "layer"),
        "float",
        "features",
        "crosscoder reconstruction FVU per model",
        labels={"model": ("base", "finetuned")},
    ),
    ResultGroup(
        "matched_fraction_ci",
        ("layer", "bound"),
        "float",
        "features",
        "95% interval of matched_fraction over resampled fine-tuned SAE latents",
        labels={"bound": _BOUNDS},
    ),
    ResultGroup(
        "matched_fraction_control_ci",
        ("layer", "bound"),
        "float",
        "features",
        "95% interval of matched_fraction_control over resampled control SAE latents",
        labels={"bound": _BOUNDS},
    ),
    ResultGroup(
        "task_specific_fraction_ci",
        ("source", "layer", "bound"),
        "float",
        "features",
        "95% interval of task_specific_fraction over resampled live latents",
        labels={"source": _SOURCES, "bound": _BOUNDS},
    ),
    ResultGroup(
        "crosscoder_share_ci",
        ("layer", "group", "bound"),
        "float",
        "features",
        "95% interval of each group's share of live crosscoder latents (crosscoder_counts / "
        "their sum) over resampled live latents",
        labels={"group": ("base_only", "shared", "finetuned_only"), "bound": _BOUNDS},
    ),
    ResultGroup(
        "transfer_fvu_ci",
        ("direction", "layer", "bound"),
        "float",
        "features",
        "95% interval of transfer_fvu over resampled held-out probe examples",
        labels={"direction": _DIRECTIONS, "bound": _BOUNDS},
    ),
    ResultGroup(
        "transfer_fvu_control_ci",
        ("layer", "bound"),
        "float",
        "features",
        "95% interval of transfer_fvu_control over resampled held-out probe examples",
        labels={"bound": _BOUNDS},
    ),
    ResultGroup(
        "match_cosine_hist",
        ("layer", "match", "bin"),
        "int",
        "features",
        "final-SAE latents per bin of decoder cosine to their base partner",
        labels={"match": ("best", "hungarian")},
        coords=_BIN,
    ),
    ResultGroup(
        "relative_norm_hist",
        ("layer", "bin"),
        "int",
        "features",
        "live crosscoder latents per bin of relative decoder norm",
        coords=_BIN,
    ),
    ResultGroup(
        "auroc_hist",
        ("dictionary", "layer", "bin"),
        "int",
        "features",
        "live latents per bin of AUROC against the label",
        coords=_BIN,
    ),
    # importance stage
    ResultGroup(
        "layer_reversion",
        ("layer", "variant", "quantity"),
        "float",
        "importance",
        "validation accuracy and loss of the final classifier with units put back to base "
        "(layer L + 1 is the head): final, base, revert (this unit), transplant (base with "
        "only this unit fine-tuned), revert_from (this unit and later), revert_through "
        "(this unit and earlier)",
        labels={
            "variant": ("final", "base", "revert", "transplant", "revert_from", "revert_through"),
            "quantity": ("accuracy", "loss"),
        },
        coords={"unit": ("layer",), "parameters": ("layer",)},
    ),
    ResultGroup(
        "drift_importance",
        ("measure",),
        "float",
        "importance",
        "Spearman rho over layers between drift (1 − linear CKA or cosine to base; the base "
        "SAE's FVU on the fine-tuned tokens) and the accuracy lost by reverting the layer "
        "(NaN with fewer than three layers to rank)",
        labels={"measure": ("linear_cka", "cosine", "transfer_fvu")},
    ),
    ResultGroup(
        "task_reversion",
        ("checkpoint", "layer", "variant", "quantity"),
        "float",
        "importance",
        "a run of several tasks: layer_reversion of every task final (checkpoint) against "
        "its own base, on its own validation split",
        labels={
            "variant": ("final", "base", "revert", "transplant", "revert_from", "revert_through"),
            "quantity": ("accuracy", "loss"),
        },
        coords={
            "unit": ("layer",),
            "parameters": ("checkpoint", "layer"),
            "task": ("checkpoint",),
            "seed": ("checkpoint",),
            "method": ("checkpoint",),
        },
    ),
    ResultGroup(
        "task_drift_importance",
        ("checkpoint", "measure"),
        "float",
        "importance",
        "a run of several tasks: drift_importance of every task final over its layers, and "
        "'pooled' over every (task, layer) point",
        labels={"checkpoint": ("pooled",), "measure": ("linear_cka", "cosine", "transfer_fvu")},
        coords={"task": ("checkpoint",), "seed": ("checkpoint",), "method": ("checkpoint",)},
    ),
    ResultGroup(
        "freeze_grid",
        ("freeze_k", "quantity"),
        "float",
        "importance",
        "the run's task fine-tuned again with layers 0 … k frozen (k = frozen_through; "
        "freeze_k none: the run's own full fine-tune): validation accuracy and loss, "
        "trainable parameters, fine-tuning seconds",
        labels={
            "freeze_k": ("none",),
            "quantity": ("accuracy", "loss", "trainable_parameters", "finetune_seconds"),
        },
        coords={"frozen_through": ("freeze_k",)},
    ),
    ResultGroup(
        "freeze_similarity",
        ("freeze_k", "layer", "metric"),
        "float",
        "importance",
        "similarity to base of each freeze grid fine-tune's hidden states on the probe set, "
        "per layer (the similarity stage's tokens and formulas)",
        labels={"freeze_k": ("none",), "metric": ("linear_cka", "cosine")},
        coords={"frozen_through": ("freeze_k",)},
    ),
    # report stage
    ResultGroup(
        "probe_predictions",
        ("checkpoint", "example", "class"),
        "float",
        "report",
        "class probabilities of each checkpoint's classifier on each probe example",
    ),
)

RESULT_GROUPS: Mapping[str, ResultGroup] = MappingProxyType({g.name: g for g in _ENTRIES})


def result_group(name: str) -> ResultGroup | None:
    """The declared entry of group ``name`` (None for an undeclared group)."""
    return RESULT_GROUPS.get(name)


def groups_of_stage(stage: str) -> list[ResultGroup]:
    """The declared groups a stage writes, in declaration order."""
    return [g for g in RESULT_GROUPS.values() if g.stage == stage]
