"""Where a dictionary sits in a model: the module behind ``hidden_states[l]`` and its splice.

``hidden_states[0]`` is the embeddings' output and ``hidden_states[l]`` (l ≥ 1) the output
of encoder block l − 1. :func:`layer_module` finds that module in a Hugging Face model, and
:func:`splice_layer` is the one place that replaces its output (SAE metrics, transfer
accuracy). :func:`hook_names` gives the names a dictionary's ``cfg.json`` records: the
module path in ``AutoModel.from_pretrained(model_name)`` and, where TransformerLens
implements the family, its hook name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# TransformerLens's HookedEncoder implements the BERT family: its embeddings output is
# ``hook_full_embed`` and block b ends with ``hook_normalized_resid_post`` (BERT is
# post-LayerNorm), which are hidden_states[0] and hidden_states[b + 1].
_TRANSFORMER_LENS_HOOKS: dict[str, Callable[[int], str]] = {
    "bert": lambda layer: (
        "hook_full_embed" if layer == 0 else f"blocks.{layer - 1}.hook_normalized_resid_post"
    ),
}


def layer_module(model: nn.Module, layer: int) -> nn.Module:
    """The module whose output is ``hidden_states[layer]`` of a Hugging Face encoder."""
    base = getattr(model, "base_model", model)
    if layer == 0:
        return base.embeddings
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        obj: object = base
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, nn.ModuleList):
            if not 1 <= layer <= len(obj):
                raise ValueError(f"layer {layer} is outside 0..{len(obj)} for this model")
            return obj[layer - 1]
    raise ValueError(f"cannot find the encoder layers of {type(base).__name__} to hook")


def module_path(model: nn.Module, layer: int) -> str:
    """The dotted name, inside ``model``, of :func:`layer_module` (``encoder.layer.2``)."""
    target = layer_module(model, layer)
    return next(name for name, module in model.named_modules() if module is target)


@contextmanager
def splice_layer(
    model: nn.Module, layer: int, replace: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Within the block, ``hidden_states[layer]`` of ``model`` is ``replace(hidden)``.

    ``replace`` gets the layer's output [B, T, d] and returns the tensor to pass on (same
    shape); the hook is removed on exit.
    """

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = replace(hidden).to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = layer_module(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def hook_names(config: dict[str, Any], layer: int) -> dict[str, str]:
    """``hook_name`` (TransformerLens's where it implements the family, else the module path)
    and ``hf_hook_name`` (the module of ``AutoModel``) of ``hidden_states[layer]``.

    ``config`` is the model's ``config.json``; the model is built on the meta device from
    it, so nothing is loaded or downloaded.
    """
    from transformers import AutoConfig, AutoModel

    values = dict(config)
    model_type = values.pop("model_type")
    with torch.device("meta"):
        skeleton = AutoModel.from_config(AutoConfig.for_model(model_type, **values))
    hf_name = module_path(skeleton, layer)
    tl_name = _TRANSFORMER_LENS_HOOKS.get(model_type)
    return {"hook_name": tl_name(layer) if tl_name else hf_name, "hf_hook_name": hf_name}
