"""Which parameters compute each ``hidden_states[l]``: the unit of reverting and freezing.

A layer is whatever the model returns as ``hidden_states[l]`` (the output of the site
:func:`find_layer_sites` finds), so its parameters are found the same way for every family,
by the autograd graph of one traced pass rather than by module names: layer l owns the
parameters that ``hidden_states[l]`` depends on and ``hidden_states[l - 1]`` does not.
Layer 0 is the embeddings with any projection after them (ELECTRA), layer l ≥ 1 the block
that makes it (and, for the last layer of GPT-2, Llama and ModernBERT, the final norm); the
``head`` is everything the logits depend on beyond ``hidden_states[L]`` (a pooler, the
classifier). Parameters shared
between layers, as ALBERT's one layer called at every depth, cannot be reverted or frozen
one layer at a time: :class:`SharedLayersError` says so by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layerdrift.tasks.modeling.sites import _hooks, _trace_ids

HEAD = "head"


class SharedLayersError(ValueError):
    """The model reuses one module's parameters at several depths."""


@dataclass(frozen=True)
class LayerParameters:
    """Parameter names (as in the task model's ``named_parameters``) per layer.

    ``layers[l]`` computes ``hidden_states[l]`` from ``hidden_states[l - 1]`` (l = 0: from
    the token ids); ``head`` maps ``hidden_states[L]`` to the logits; ``unused`` holds what
    the logits do not depend on (a decoder's unused embeddings, say), never swapped.
    """

    layers: tuple[tuple[str, ...], ...]
    head: tuple[str, ...]
    unused: tuple[str, ...]

    @property
    def num_layers(self) -> int:
        """L: the deepest layer index (``len(layers) - 1``)."""
        return len(self.layers) - 1

    def rows(self) -> list[int | str]:
        """Every unit in forward order: 0 … L, then ``"head"``."""
        return [*range(len(self.layers)), HEAD]

    def names(self, units) -> list[str]:
        """The parameter names of ``units`` (layer indices and/or ``"head"``)."""
        out: list[str] = []
        for unit in units:
            out.extend(self.head if unit == HEAD else self.layers[int(unit)])
        return out


def reused_modules(model: nn.Module) -> list[str]:
    """Modules with parameters of their own that one forward pass (8 tokens, eval mode)
    calls more than once: ALBERT's shared layer, say. Empty for most families."""
    ids = _trace_ids(model)
    calls: dict[str, int] = {}

    def count(name: str):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1

        return hook

    def hook_for(name: str):
        module = model.get_submodule(name)
        return count(name) if any(True for _ in module.parameters(recurse=False)) else None

    training = model.training
    model.eval()
    try:
        with torch.no_grad(), _hooks(model, hook_for):
            model(input_ids=ids)
    finally:
        model.train(training)
    return sorted(name for name, n in calls.items() if n > 1)


def _reachable(outputs: list[torch.Tensor], params: list[nn.Parameter]) -> list[set[int]]:
    """For each output, the indices of ``params`` in its autograd graph."""
    found = []
    for output in outputs:
        grads = torch.autograd.grad(output.sum(), params, retain_graph=True, allow_unused=True)
        found.append({i for i, grad in enumerate(grads) if grad is not None})
    return found


def _traced_reach(model: nn.Module) -> tuple[list[str], list[set[int]]]:
    """Parameter names, and for each of ``hidden_states[0..L]`` and the logits the indices
    of the parameters it depends on: one traced pass on 8 tokens in eval mode (the model's
    mode and ``requires_grad`` flags are restored; no gradient is stored on a parameter)."""
    training = model.training
    named = list(model.named_parameters())
    trainable = [p.requires_grad for _, p in named]
    model.eval()
    try:
        ids = _trace_ids(model)
        params = [p.requires_grad_(True) for _, p in named]  # frozen ones too, for the graph
        with torch.enable_grad():
            out = model(input_ids=ids, output_hidden_states=True)
            reach = _reachable([*out.hidden_states, out.logits], params)
    finally:
        model.train(training)
        for (_, param), flag in zip(named, trainable, strict=True):
            param.requires_grad_(flag)
    return [name for name, _ in named], reach


def layer_parameters(model: nn.Module) -> LayerParameters:
    """The parameters of every layer and of the head of a sequence classifier ``model``.

    One traced pass on 8 tokens in eval mode (:func:`_traced_reach`). Raises
    :class:`SharedLayersError` naming the family and module when a module with parameters
    runs at several depths.
    """
    reused = reused_modules(model)
    if reused:
        raise SharedLayersError(
            f"model family {model.config.model_type!r} reuses the parameters of {reused[0]!r} "
            "at several depths, so its layers cannot be reverted or frozen one at a time"
        )
    names, reach = _traced_reach(model)
    owned, seen = [], set()
    for indices in reach:
        owned.append(tuple(names[i] for i in sorted(indices - seen)))
        seen |= indices
    unused = tuple(name for i, name in enumerate(names) if i not in seen)
    return LayerParameters(layers=tuple(owned[:-1]), head=owned[-1], unused=unused)


def head_parameters(model: nn.Module) -> tuple[str, ...]:
    """The head of a sequence classifier ``model``: names of the parameters the logits
    depend on beyond ``hidden_states[L]`` (a pooler, the classifier). Unlike
    :func:`layer_parameters` this works for models that share layers (ALBERT)."""
    names, reach = _traced_reach(model)
    return tuple(names[i] for i in sorted(reach[-1] - reach[-2]))
