"""Saving and loading :class:`SparseAutoencoder` in SAELens's file layout.

The weights in ``sae_weights.safetensors`` act on *raw* activations: the input scale is
folded in as SAELens does (``W_enc·s``, ``W_dec/s``, ``b_dec/s``), so the file is usable
without layerdrift, and ``cfg.json`` says ``normalize_activations: "none"``. The scale is
kept in ``cfg["scale_factor"]`` and unfolded on load, so the loaded model has unit-norm
decoder rows again and gives the same outputs as the saved one (up to float rounding).
"""

from __future__ import annotations

from typing import Any

import torch

from layerdrift.storage.saes import load_sae_files, save_sae_files
from layerdrift.tasks.sae.model import SAESpec, SparseAutoencoder

SAELENS_ARCHITECTURE = {"topk": "topk", "relu": "standard"}


def hook_name(layer: int) -> str:
    """Where the SAE reads: ``hidden_states.<layer>`` of ``output_hidden_states``."""
    return f"hidden_states.{layer}"


def saelens_cfg(model: SparseAutoencoder) -> dict[str, Any]:
    """``cfg.json`` contents: SAELens's field names first, then layerdrift's own."""
    spec = model.spec
    cfg: dict[str, Any] = {
        "architecture": SAELENS_ARCHITECTURE[spec.architecture],
        "d_in": spec.d_in,
        "d_sae": spec.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": spec.model_name,
        "hook_name": hook_name(spec.layer),
        "hook_layer": spec.layer,
        "hook_head_index": None,
        "activation_fn_str": "topk" if spec.architecture == "topk" else "relu",
        "activation_fn_kwargs": {"k": spec.k} if spec.architecture == "topk" else {},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "finetuning_scaling_factor": False,
        "prepend_bos": True,
        "context_size": None,
        "dataset_path": "",
        "k": spec.k if spec.architecture == "topk" else None,
        "metadata": {
            "model_name": spec.model_name,
            "hook_name": hook_name(spec.layer),
            "hook_layer": spec.layer,
        },
        # layerdrift's own fields
        "layerdrift_architecture": spec.architecture,
        "scale_factor": float(model.scale),
        "scale_folded_into_weights": True,
        "checkpoint": spec.checkpoint,
        "layer": spec.layer,
        "l1_coefficient": spec.l1_coefficient,
        "aux_k": spec.k_aux,
        "aux_coefficient": spec.aux_coefficient,
        "seed": spec.seed,
        **spec.extra,
    }
    return cfg


def save_sae(model: SparseAutoencoder, url: str) -> None:
    """Write ``model`` to folder ``url`` (weights, then ``cfg.json``), scale folded in."""
    s = model.scale.detach().double().cpu()
    tensors = {
        "W_enc": (model.W_enc.detach().double().cpu() * s).float(),
        "b_enc": model.b_enc.detach().cpu(),
        "W_dec": (model.W_dec.detach().double().cpu() / s).float(),
        "b_dec": (model.b_dec.detach().double().cpu() / s).float(),
    }
    save_sae_files(url, saelens_cfg(model), tensors)


def spec_from_cfg(cfg: dict[str, Any]) -> SAESpec:
    """The :class:`SAESpec` recorded in a ``cfg.json``."""
    known = {"model_name", "checkpoint", "layer", "seed", "l1_coefficient", "aux_coefficient"}
    architecture = cfg.get("layerdrift_architecture") or (
        "topk" if cfg.get("architecture") == "topk" else "relu"
    )
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 1
    return SAESpec(
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        architecture=architecture,
        k=int(k),
        aux_k=cfg.get("aux_k"),
        **{name: cfg[name] for name in known if name in cfg},
    )


def load_sae(url: str, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load the SAE saved in folder ``url`` onto ``device`` (scale unfolded again)."""
    cfg, tensors = load_sae_files(url)
    model = SparseAutoencoder(spec_from_cfg(cfg))
    s = torch.tensor(float(cfg.get("scale_factor", 1.0)), dtype=torch.float64)
    if not cfg.get("scale_folded_into_weights", False):
        s = torch.tensor(1.0, dtype=torch.float64)
    with torch.no_grad():
        model.W_enc.copy_((tensors["W_enc"].double() / s).float())
        model.b_enc.copy_(tensors["b_enc"])
        model.W_dec.copy_((tensors["W_dec"].double() * s).float())
        model.b_dec.copy_((tensors["b_dec"].double() * s).float())
        model.scale.fill_(float(cfg.get("scale_factor", 1.0)))
    return model.to(device)
