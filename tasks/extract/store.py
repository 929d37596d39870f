"""Creating the activation store of a run: identities of the checkpoints, tokenized probe set."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from layerdrift.storage.activations import create_store
from layerdrift.storage.schema import StoreIdentity, StoreMismatchError, tokenize_probe
from layerdrift.tasks.modeling import tokenizer_fingerprint

logger = logging.getLogger(__name__)


def _weights_sha256(model_dir: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors weights: save it again")
    for file in files:
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def model_identity(model_dir: str | Path) -> dict:
    """``{model_type, num_hidden_layers, hidden_size, weights_sha256}`` of a saved model."""
    folder = Path(model_dir)
    config = json.loads((folder / "config.json").read_text())
    return {
        "model_type": config.get("model_type"),
        "num_hidden_layers": int(config["num_hidden_layers"]),
        "hidden_size": int(config["hidden_size"]),
        "weights_sha256": _weights_sha256(folder),
    }


def create_activation_store(
    url: str,
    texts: list[str],
    labels: list[int],
    tokenizer,
    checkpoints: dict[str, str | Path],
    *,
    max_length: int,
    token_chunk: int,
    dtype: str = "float16",
    config_hash: str = "",
    dataset_identity: dict | None = None,
    overwrite: bool = False,
) -> str:
    """Tokenize the probe set once and create the store for ``checkpoints`` (label -> folder).

    Every checkpoint must share the layer count and hidden size of the first. Returns the
    store's generation id (the existing one when an identical store is already there).
    """
    if not checkpoints:
        raise ValueError("no checkpoints given: the store needs at least one")
    models = {label: model_identity(folder) for label, folder in checkpoints.items()}
    first_label, first = next(iter(models.items()))
    for label, ident in models.items():
        if (ident["num_hidden_layers"], ident["hidden_size"]) != (
            first["num_hidden_layers"],
            first["hidden_size"],
        ):
            raise StoreMismatchError(
                f"checkpoint {label!r} has {ident['num_hidden_layers']} layers x hidden "
                f"{ident['hidden_size']}, but {first_label!r} has {first['num_hidden_layers']} "
                f"x {first['hidden_size']}: all checkpoints must come from one architecture"
            )
    layout = tokenize_probe(texts, labels, tokenizer, max_length)
    identity = StoreIdentity(
        config_hash=config_hash,
        dataset=dataset_identity or {},
        tokenizer=tokenizer_fingerprint(tokenizer),
        checkpoints=tuple(checkpoints),
        models=models,
        n_layers=first["num_hidden_layers"] + 1,
        hidden=first["hidden_size"],
        n_tokens=layout.n_tokens,
        token_chunk=token_chunk,
        dtype=dtype,
    )
    return create_store(url, layout, identity, overwrite=overwrite)
