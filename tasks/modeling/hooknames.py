"""The names other tools give ``hidden_states[l]``: a module path and a TransformerLens hook.

A dictionary's ``cfg.json`` records where it reads (SAELens ``metadata``): ``hf_hook_name``,
the adapter's traced site of ``hidden_states[l]`` as a dotted module name inside
``AutoModel.from_config(config)``, and ``hook_name``, TransformerLens's name for the same
tensor where TransformerLens implements the family (else the module path again).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import torch

from layerdrift.tasks.modeling.sites import find_layer_sites

# TransformerLens's HookedEncoder implements the BERT family: its embeddings output is
# ``hook_full_embed`` and block b ends with ``hook_normalized_resid_post`` (BERT is
# post-LayerNorm), which are hidden_states[0] and hidden_states[b + 1].
_TRANSFORMER_LENS_HOOKS: dict[str, Callable[[int], str]] = {
    "bert": lambda layer: (
        "hook_full_embed" if layer == 0 else f"blocks.{layer - 1}.hook_normalized_resid_post"
    ),
}


@functools.lru_cache(maxsize=8)
def _site_paths(config_json: str) -> tuple[str, ...]:
    """Dotted module names of every traced site, for a config given as sorted JSON.

    The sites depend on the architecture, not the weights, so a randomly initialised model
    built from the config is traced (on the CPU, seeded: nothing is loaded or downloaded).
    """
    from transformers import AutoConfig, AutoModel

    values = json.loads(config_json)
    model_type = values.pop("model_type")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        skeleton = AutoModel.from_config(AutoConfig.for_model(model_type, **values))
    return tuple(
        f"{site.module}#{site.call}" if site.call else site.module
        for site in find_layer_sites(skeleton)
    )


def hook_names(config: dict[str, Any], layer: int) -> dict[str, str]:
    """``hook_name`` and ``hf_hook_name`` of ``hidden_states[layer]`` for a model's
    ``config.json`` contents (see the module docstring).

    A site reached more than once per pass (ALBERT's one shared layer) is named
    ``module#call`` with its 0-based call number.
    """
    paths = _site_paths(json.dumps(config, sort_keys=True))
    if not 0 <= layer < len(paths):
        raise ValueError(f"layer {layer} is outside 0..{len(paths) - 1} for this model")
    tl_name = _TRANSFORMER_LENS_HOOKS.get(config["model_type"])
    return {"hook_name": tl_name(layer) if tl_name else paths[layer], "hf_hook_name": paths[layer]}
