"""Where each ``hidden_states[l]`` is computed inside a model, and splicing a replacement there.

Families put ``hidden_states[l]`` in different places: BERT's embeddings module, ELECTRA's
``embeddings_project`` after it, ALBERT's ``embedding_hidden_mapping_in`` and one shared
layer called once per depth, GPT-2's dropout after the summed embeddings, the final norm of
GPT-2, Llama and ModernBERT for the last entry. Rather than a table per family, the adapter
traces one short forward pass and finds, for every l, the module call whose output *is*
``hidden_states[l]``, then proves it: a second pass adds a different offset at every site and
each ``hidden_states[l]`` must come out as exactly that site's replaced output. A family
where that fails cannot be spliced, and says so by name before any stage runs.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

TRACE_TOKENS = 8  # length of the traced sequence: short, and inside every position table
_SITES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base model -> its sites


class SiteNotFoundError(ValueError):
    """No module call of the model outputs one of its ``hidden_states``."""


@dataclass(frozen=True)
class LayerSite:
    """The ``call``-th output (0-based, within one forward pass) of the submodule ``module``
    (a dotted name inside the base model) is ``hidden_states[layer]``."""

    layer: int
    module: str
    call: int = 0


def _tensor_of(output) -> torch.Tensor | None:
    """The hidden-state tensor of a module output: the tensor itself or a tuple's first item.

    Dict-like outputs (``ModelOutput``) are not splice points: their first field is copied
    from a module inside, which is the one to splice.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _with_tensor(output, tensor: torch.Tensor):
    """``output`` with its hidden-state tensor replaced by ``tensor``."""
    return tensor if isinstance(output, torch.Tensor) else (tensor, *output[1:])


def _trace_ids(model: nn.Module) -> torch.Tensor:
    """A fixed (1, TRACE_TOKENS) batch of ordinary token ids (no pad id) for tracing."""
    vocab = int(model.get_input_embeddings().num_embeddings)
    pad = getattr(model.config, "pad_token_id", None)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, TRACE_TOKENS), generator=generator)
    if pad is not None:
        ids = torch.where(ids == pad, (ids + 1) % vocab, ids)
    return ids.to(next(model.parameters()).device)


@contextlib.contextmanager
def _hooks(model: nn.Module, hook_for: Callable[[str], Callable | None]) -> Iterator[None]:
    """Install ``hook_for(name)`` (when not None) as a forward hook on every submodule, run
    first so that hooks transformers installs to record ``hidden_states`` see its output."""
    handles = []
    try:
        for name, module in model.named_modules():
            hook = hook_for(name) if name else None
            if hook is not None:
                handles.append(module.register_forward_hook(hook, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _candidates(model: nn.Module, ids: torch.Tensor) -> tuple[list[list[tuple[str, int]]], int]:
    """Per layer, the (module, call) pairs whose output equals ``hidden_states[l]``, the last
    to finish first (an enclosing block finishes after the norm inside it)."""
    seen: list[tuple[str, int, torch.Tensor]] = []
    calls: dict[str, int] = {}

    def record(name: str):
        def hook(module, args, output):
            tensor = _tensor_of(output)
            if tensor is not None:
                seen.append((name, calls.get(name, 0), tensor.detach()))
            calls[name] = calls.get(name, 0) + 1

        return hook

    with _hooks(model, record):
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    found = []
    for state in states:
        matches = [
            (name, call)
            for name, call, tensor in reversed(seen)
            if tensor.shape == state.shape and torch.equal(tensor, state)
        ]
        found.append(matches)
    return found, len(states)


def _verified(model: nn.Module, ids: torch.Tensor, chosen: list[tuple[str, int]]) -> list[bool]:
    """Add offset ``l + 1`` at every chosen site in one pass; which ``hidden_states[l]`` then
    equal their site's replaced output exactly."""
    by_site = {site: layer for layer, site in enumerate(chosen)}
    replaced: dict[int, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def offset(name: str):
        def hook(module, args, output):
            call = calls.get(name, 0)
            calls[name] = call + 1
            layer = by_site.get((name, call))
            if layer is None:
                return None
            new = _tensor_of(output) + float(layer + 1)
            replaced[layer] = new
            return _with_tensor(output, new)

        return hook

    names = {name for name, _ in chosen}
    with _hooks(model, lambda name: offset(name) if name in names else None):
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    return [layer in replaced and torch.equal(replaced[layer], s) for layer, s in enumerate(states)]


@torch.no_grad()
def find_layer_sites(model: nn.Module) -> list[LayerSite]:
    """The site of every ``hidden_states[l]``, l = 0..L, in a model's base model.

    ``model`` is a bare model or a task model (its ``base_model`` is traced). Traced once per
    model object, in eval mode. Raises :class:`SiteNotFoundError` naming the family and the
    layer when some ``hidden_states[l]`` has no module call that verifiably produces it.
    """
    base = getattr(model, "base_model", model)
    if base in _SITES:
        return _SITES[base]
    training = base.training
    base.eval()
    try:
        ids = _trace_ids(base)
        candidates, n_states = _candidates(base, ids)
        pick = [0] * n_states
        while True:
            missing = [layer for layer in range(n_states) if pick[layer] >= len(candidates[layer])]
            if missing:
                raise SiteNotFoundError(
                    f"model family {base.config.model_type!r} ({type(base).__name__}): no "
                    f"module outputs hidden_states[{missing[0]}] verifiably, so layer splices "
                    "cannot hit what the store holds; this family is not supported"
                )
            chosen = [candidates[layer][pick[layer]] for layer in range(n_states)]
            ok = _verified(base, ids, chosen)
            if all(ok):
                break
            pick = [p + (not good) for p, good in zip(pick, ok, strict=True)]
    finally:
        base.train(training)
    sites = [LayerSite(layer, name, call) for layer, (name, call) in enumerate(chosen)]
    _SITES[base] = sites
    return sites


@contextlib.contextmanager
def splice(
    model: nn.Module,
    layer: int,
    replace: Callable[[torch.Tensor], torch.Tensor],
    mask: torch.Tensor | Callable[[], torch.Tensor],
) -> Iterator[LayerSite]:
    """Replace ``hidden_states[layer]`` on the ``mask`` tokens while the block is active.

    ``replace`` maps the selected hidden states [n, hidden] to their replacement [n, hidden];
    ``mask`` is a bool [batch, seq] tensor (or a function returning the current batch's).
    Everything computed after that point in ``model`` (later layers, pooling, head) sees the
    replacement. Yields the site.
    """
    base = getattr(model, "base_model", model)
    sites = find_layer_sites(base)
    if not 0 <= layer < len(sites):
        raise ValueError(f"layer {layer} is outside 0..{len(sites) - 1} for this model")
    site = sites[layer]
    calls = [0]

    def reset(module, args):
        calls[0] = 0

    def hook(module, args, output):
        call = calls[0]
        calls[0] += 1
        if call != site.call:
            return None
        hidden = _tensor_of(output)
        selected = mask() if callable(mask) else mask
        new = hidden.clone()
        new[selected] = replace(hidden[selected]).to(hidden.dtype)
        return _with_tensor(output, new)

    handles = [
        base.register_forward_pre_hook(reset),
        base.get_submodule(site.module).register_forward_hook(hook, prepend=True),
    ]
    try:
        yield site
    finally:
        for handle in handles:
            handle.remove()


def output_form(output) -> int | None:
    """How a site module returns its hidden state: None for a bare tensor, else the length of
    its tuple. Raises ValueError when the tuple carries more than the hidden state (cached
    keys and values, attention weights), which a replayed output could not reproduce."""
    if isinstance(output, torch.Tensor):
        return None
    if any(item is not None for item in output[1:]):
        raise ValueError(f"a layer module returns {len(output)} items, not only its hidden state")
    return len(output)


def in_form(hidden: torch.Tensor, form: int | None):
    """``hidden`` as a site module of ``form`` (:func:`output_form`) returns it."""
    return hidden if form is None else (hidden,) + (None,) * (form - 1)


def shared_layer_error(model: nn.Module) -> str | None:
    """Why the layer sites of ``model`` cannot be replayed one depth at a time (ALBERT's one
    layer runs at every depth), or None when they can."""
    base = getattr(model, "base_model", model)
    if any(site.call != 0 for site in find_layer_sites(base)):
        return "a layer module runs at several depths"
    return None


@dataclass
class SiteRecord:
    """The output of the site of ``hidden_states[layer]`` in the last forward pass, and the
    form (:func:`output_form`) of every site up to it; ``error`` says why it cannot be
    replayed (None: it can)."""

    layer: int
    hidden: torch.Tensor | None = None
    forms: dict[int, int | None] = field(default_factory=dict)
    error: str | None = None


@contextlib.contextmanager
def recording(model: nn.Module, layer: int) -> Iterator[SiteRecord]:
    """Record, in every forward pass inside the block, the output of the site of
    ``hidden_states[layer]`` (before any splice there replaces it) and how the sites up to
    it return their outputs, for :func:`replayed`."""
    base = getattr(model, "base_model", model)
    sites = find_layer_sites(base)[: layer + 1]
    record = SiteRecord(layer, error=shared_layer_error(base))

    def hook_for(depth: int):
        def hook(module, args, output):
            try:
                record.forms[depth] = output_form(output)
            except ValueError as error:
                record.error = str(error)
            if depth == layer:
                # A copy: a later module may change its input in place.
                record.hidden = _tensor_of(output).detach().clone()

        return hook

    handles = [
        base.get_submodule(site.module).register_forward_hook(hook_for(depth), prepend=True)
        for depth, site in enumerate(sites)
    ]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def replayed(
    model: nn.Module,
    layer: int,
    forms: Mapping[int, int | None],
    hidden: torch.Tensor | Callable[[], torch.Tensor],
) -> Iterator[None]:
    """While active, the modules that produce ``hidden_states[0 … layer]`` compute nothing:
    each returns ``hidden`` (or, when it is a function, what it returns at that call) in its
    own form, ``forms[depth]`` (:func:`output_form`), so a forward pass goes on from
    ``hidden`` at ``layer``. Everything after that point is the same arithmetic on the same
    input as a full pass whose hidden state there was ``hidden``. The caller makes sure the
    sites can be replayed (:func:`shared_layer_error`, :func:`output_form`) and that the
    batch has the shape ``hidden`` was recorded at."""
    base = getattr(model, "base_model", model)
    sites = find_layer_sites(base)[: layer + 1]
    modules = [base.get_submodule(site.module) for site in sites]
    current = hidden if callable(hidden) else lambda: hidden

    def skip(depth: int):
        form = forms[depth]
        return lambda *args, **kwargs: in_form(current(), form)

    try:
        for depth, module in enumerate(modules):
            module.forward = skip(depth)  # an instance attribute shadows the class's forward
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)
