"""A randomly initialised copy of a model: the floor of the similarity statistics.

The similarity of a fine-tuned layer to its base layer means little without what an
*untrained* network of the same architecture scores on the same tokens: token identity and
position alone make random hidden states similar (Kornblith et al. 2019, sec. 6.1, compare
CKA between trained and random networks). :func:`random_encoder` builds that network from the
base model's config with ``AutoModel.from_config`` (nothing is downloaded) and draws every
weight from one seeded ``torch.Generator``, so the same seed gives the same bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from layerdrift.tasks.modeling.load import load_config, quiet_transformers
from layerdrift.tasks.modeling.tokens import load_tokenizer

# BERT's ``initializer_range`` default, for configs that name none.
DEFAULT_INIT_STD = 0.02


def random_encoder(config_source: str | Path, seed: int) -> torch.nn.Module:
    """The bare model of ``config_source``'s architecture with seeded random weights (eval).

    Weights follow BERT's ``_init_weights`` for every family: linear and embedding weights
    N(0, initializer_range²), biases 0, normalisation weights 1, padding embeddings 0, drawn
    module by module in ``model.modules()`` order from ``torch.Generator().manual_seed(seed)``.
    The global torch RNG is left as it was.
    """
    from transformers import AutoModel

    config = load_config(config_source)
    std = float(getattr(config.get_text_config(), "initializer_range", DEFAULT_INIT_STD))
    with quiet_transformers(), torch.random.fork_rng(devices=[]):
        model = AutoModel.from_config(config, dtype=torch.float32)  # its own init, replaced
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            _init_module(module, std, generator)
    return model.eval()


def _init_module(module: torch.nn.Module, std: float, generator: torch.Generator) -> None:
    is_norm = "norm" in type(module).__name__.lower()
    for name, param in module.named_parameters(recurse=False):
        if is_norm:
            param.fill_(1.0 if name == "weight" else 0.0)
        elif name == "bias":
            param.zero_()
        else:
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    padding = getattr(module, "padding_idx", None)
    if isinstance(module, torch.nn.Embedding) and padding is not None:
        module.weight[padding].zero_()


def save_random_encoder(config_source: str | Path, seed: int, folder: str | Path) -> Path:
    """Save :func:`random_encoder` and ``config_source``'s tokenizer to ``folder`` (a
    ``save_pretrained`` folder, safetensors), atomically: a folder that exists is complete.
    Returns the folder; an existing one is kept as it is."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        random_encoder(config_source, seed).save_pretrained(staging)
        load_tokenizer(str(config_source)).save_pretrained(staging)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
