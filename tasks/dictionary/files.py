"""Dictionaries in SAELens 6's file layout, read back through the architecture registry.

``cfg.json`` is SAELens's inference config (``architecture`` ∈ {standard, topk, jumprelu},
``d_in``, ``d_sae``, ``metadata`` with ``sae_lens_version``, ``model_name``, ``hook_name``,
``hf_hook_name``) plus ``metadata.layerdrift``: the architecture it was trained as (a
BatchTopK dictionary is saved as the JumpReLU it is at inference, every threshold θ, as
SAELens does), its loss settings, the input scale and provenance. ``sparsity.safetensors``
holds the log10 feature density on training tokens.

Units. Decoder rows are unit norm and ``W_enc``/``W_dec`` are the trained weights.

- An SAE file acts on the model's raw activations, so SAELens's tools can attach it at
  ``hook_name``: training normalised the input by ``s`` (``input_scale``, E‖s·x‖² = d_in),
  and the file divides ``b_enc``, ``b_dec`` and the thresholds by ``s`` instead, which gives
  the same reconstruction with codes in the model's units (code = normalised code / s).
- A crosscoder file is one SAE over the concatenated normalised activations of its models,
  ``[s_0·x_0, s_1·x_1]`` (d_in = n_models · d_model; the per-model split of ``W_dec`` is
  ``W_dec.view(d_sae, n_models, d_model)``): the models have separate scales, so they are
  stated (``input_scale``, one per model) rather than folded into weights or biases.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from layerdrift.storage.saes import load_sae_files, read_cfg, sae_exists, save_sae_files
from layerdrift.tasks.dictionary.model import (
    ARCHITECTURES,
    Dictionary,
    DictionarySpec,
    build,
    unknown_architecture,
)

logger = logging.getLogger(__name__)

SAELENS_VERSION = "6.54.12"  # the SAELens release whose layout and loader the files are tested with
LAYOUT = 2  # layerdrift's file layout; folders of another layout are trained again
SAELENS_NAMES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
DENSITY_EPS = 1e-10  # log10(density + eps), as SAELens's sparsity file


def layerdrift_info(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``metadata.layerdrift`` part of a ``cfg.json`` ({} for a foreign file)."""
    return dict((cfg.get("metadata") or {}).get("layerdrift") or {})


def folder_current(url: str, generation: str) -> bool:
    """Whether ``url`` holds a complete dictionary of this layout trained on store
    ``generation`` (anything else is stale and trained again)."""
    if not sae_exists(url):
        return False
    info = layerdrift_info(read_cfg(url))
    return info.get("layout") == LAYOUT and info.get("store_generation") == generation


def saelens_cfg(
    model: Dictionary, metadata: dict[str, Any], provenance: dict[str, Any]
) -> dict[str, Any]:
    """``cfg.json`` of ``model``: SAELens's fields, SAELens ``metadata`` (``model_name``,
    ``hook_name``, ...) and layerdrift's ``provenance`` under ``metadata.layerdrift``."""
    spec = model.spec
    cfg: dict[str, Any] = {
        "architecture": model.saelens_architecture,
        "d_in": spec.d_in,
        "d_sae": spec.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if model.saelens_architecture == "topk":
        cfg |= {"k": int(min(spec.k, spec.d_sae)), "rescale_acts_by_decoder_norm": False}
    info = {
        "layout": LAYOUT,
        "architecture": spec.architecture,
        "d_model": spec.d_model,
        "n_models": spec.n_models,
        "hyperparameters": {name: getattr(spec, name) for name in model.hyperparameters},
        "input_scale": [float(v) for v in model.scale],
        "units": "model" if spec.n_models == 1 else "normalised",
        **provenance,
    }
    cfg["metadata"] = {"sae_lens_version": SAELENS_VERSION, **metadata, "layerdrift": info}
    return cfg


def file_tensors(model: Dictionary) -> dict[str, torch.Tensor]:
    """The weights as the file holds them (biases and thresholds over the code scale)."""
    s = model.code_scale.detach().double().cpu()
    tensors = {"W_enc": model.W_enc, "W_dec": model.W_dec}
    for name, tensor in {"b_enc": model.b_enc, "b_dec": model.b_dec}.items():
        tensors[name] = tensor.detach().double().cpu() / s
    for name, tensor in model.latent_tensors().items():
        tensors[name] = tensor.detach().double().cpu() / s
    return {name: t.detach().cpu().float() for name, t in tensors.items()}


@torch.no_grad()
def save_dictionary(
    model: Dictionary,
    url: str,
    metadata: dict[str, Any],
    provenance: dict[str, Any],
    density: torch.Tensor | None = None,
) -> None:
    """Fold decoder norms into the codes (outputs unchanged), then write ``model`` to ``url``.

    ``density`` [d_sae] is each latent's firing frequency on training tokens.
    """
    model.fold_decoder_norms()
    sparsity = None if density is None else torch.log10(density.double() + DENSITY_EPS)
    save_sae_files(url, saelens_cfg(model, metadata, provenance), file_tensors(model), sparsity)


def spec_from_cfg(cfg: dict[str, Any], url: str = "") -> DictionarySpec:
    """The :class:`DictionarySpec` of a ``cfg.json`` (layerdrift's or SAELens's own)."""
    info = layerdrift_info(cfg)
    name = info.get("architecture") or SAELENS_NAMES.get(cfg.get("architecture", ""))
    if name not in ARCHITECTURES:
        raise ValueError(f"{url or 'cfg.json'}: {unknown_architecture(cfg.get('architecture'))}")
    n_models = int(info.get("n_models", 1))
    hyper = dict(info.get("hyperparameters") or {})
    if "k" in cfg and "k" not in hyper:
        hyper["k"] = int(cfg["k"])
    d_model = int(info.get("d_model", int(cfg["d_in"]) // n_models))
    return DictionarySpec(d_model, int(cfg["d_sae"]), name, n_models, **hyper)


@torch.no_grad()
def load_dictionary(url: str, device: str | torch.device = "cpu") -> Dictionary:
    """The dictionary saved in folder ``url``, on ``device``, with ``cfg.json`` as ``model.cfg``."""
    cfg, tensors = load_sae_files(url)
    model = build(spec_from_cfg(cfg, url))
    scale = layerdrift_info(cfg).get("input_scale") or [1.0] * model.spec.n_models
    model.scale.copy_(torch.tensor(scale, dtype=torch.float32))
    s = model.code_scale.double()
    model.W_enc.copy_(tensors["W_enc"])
    model.W_dec.copy_(tensors["W_dec"])
    model.b_enc.copy_((tensors["b_enc"].double() * s).float())
    model.b_dec.copy_((tensors["b_dec"].double() * s).float())
    extra = {name: (tensors[name].double() * s).float() for name in model.latent_tensors()}
    model.load_latent_tensors(extra)
    model.cfg = cfg
    return model.to(device)
