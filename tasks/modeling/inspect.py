"""Checking a model up front, before any stage runs: :func:`inspect_model`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from layerdrift.tasks.modeling.load import (
    check_family,
    load_config,
    load_encoder,
    quiet_transformers,
)
from layerdrift.tasks.modeling.params import reused_modules
from layerdrift.tasks.modeling.resolve import (
    ModelNotFoundError,
    UnsupportedModelError,
    resolve_model,
)
from layerdrift.tasks.modeling.sites import SiteNotFoundError, find_layer_sites
from layerdrift.tasks.modeling.tokens import load_tokenizer


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`inspect_model` found.

    ``num_layers`` is L: the store holds layers 0 (embeddings output) … L, so valid layer
    indices (``sae.layers``, ``features.layers``) are ``range(num_layers + 1)``.
    ``sites[l]`` names the module call whose output is ``hidden_states[l]``.
    ``shared_module`` names a module whose parameters run at several depths (ALBERT's one
    layer), which makes layers impossible to revert or freeze one at a time; None for most.
    """

    name: str
    path: str
    family: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    tokenizer_size: int
    sites: tuple[str, ...]
    shared_module: str | None = None

    @property
    def layers(self) -> range:
        """Every valid layer index: 0 … L."""
        return range(self.num_layers + 1)


def _check_tokenizer(name: str, tokenizer, vocab_rows: int) -> int:
    """The tokenizer's size (largest id + 1); raises unless it fits the embedding matrix.

    Every id needs a row; and a tokenizer covering under half the rows is not this model's
    (embedding matrices are padded by at most a few hundred rows, not by half).
    """
    size = max(tokenizer.get_vocab().values()) + 1
    if size > vocab_rows or size < vocab_rows / 2:
        raise UnsupportedModelError(
            f"the tokenizer of {name} has {size} token ids but the model's embedding matrix "
            f"has {vocab_rows} rows: the tokenizer files do not belong to this model"
        )
    return size


def inspect_model(name: str, trust_remote_code: bool = False) -> ModelInfo:
    """Check that model ``name`` can run through layerdrift, without writing anything.

    In order: the name resolves (bundled, assembled, a folder or a hub name); its config
    loads through ``AutoConfig``; the family has a bare model and a sequence-classification
    head and is not an encoder-decoder; the tokenizer files load, can pad, and every token id
    has a row in the embedding matrix; the weights load; ``hidden_states`` has L + 1 entries
    and every one has a module call that verifiably produces it (one traced pass on 8
    tokens). Raises :class:`ModelNotFoundError` or :class:`UnsupportedModelError` (a
    subclass) with a one-line message; returns a :class:`ModelInfo`. Loading the weights
    makes this take about as long as loading the model (a second or two for 110M params).
    """
    path = resolve_model(name)
    config = load_config(path, trust_remote_code)
    check_family(config, trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code)
    text_config = config.get_text_config()
    tokenizer_size = _check_tokenizer(repr(name), tokenizer, int(text_config.vocab_size))
    try:
        with quiet_transformers():
            model = load_encoder(path, torch.device("cpu"))
    except OSError as error:
        raise ModelNotFoundError(f"cannot load the weights of model {name!r}: {error}") from error
    try:
        sites = find_layer_sites(model)
    except SiteNotFoundError as error:
        raise UnsupportedModelError(str(error)) from error
    depth = int(text_config.num_hidden_layers)
    if len(sites) != depth + 1:
        raise UnsupportedModelError(
            f"model family {config.model_type!r} returns {len(sites)} hidden states but its "
            f"config says {depth} layers: layerdrift needs one per layer plus the embeddings"
        )
    return ModelInfo(
        name=name,
        path=path,
        family=str(config.model_type),
        num_layers=depth,
        hidden_size=int(text_config.hidden_size),
        vocab_size=int(text_config.vocab_size),
        tokenizer_size=tokenizer_size,
        sites=tuple(f"{s.module}" + (f" (call {s.call})" if s.call else "") for s in sites),
        shared_module=next(iter(reused_modules(model)), None),
    )
