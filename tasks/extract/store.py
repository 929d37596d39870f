"""Creating the activation store of a run: identities of the checkpoints, tokenized probe set."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from layerdrift.storage.activations import create_store
from layerdrift.storage.schema import StoreIdentity, StoreMismatchError, TokenLayout
from layerdrift.tasks.modeling import model_shape, tokenize_texts, tokenizer_fingerprint

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
    """``{model_type, num_hidden_layers, hidden_size, weights_sha256}`` of a saved model.

    Depth and width come through ``AutoConfig`` (:func:`model_shape`), whatever the family
    calls them in its ``config.json``.
    """
    folder = Path(model_dir)
    shape = model_shape(folder)
    return {
        "model_type": shape.model_type,
        "num_hidden_layers": shape.num_hidden_layers,
        "hidden_size": shape.hidden_size,
        "weights_sha256": _weights_sha256(folder),
    }


def tokenize_probe(texts: list[str], labels: list[int], tokenizer, max_length: int) -> TokenLayout:
    """Tokenize the probe texts once (truncated to ``max_length``, no padding).

    Special tokens are kept and flagged; ``token_text`` is readable and ``token_piece`` the
    raw piece (:func:`tokenize_texts`). Raises ``ValueError`` for empty input, mismatched
    lengths or an example with no tokens.
    """
    if len(texts) == 0:
        raise ValueError("the probe set is empty: the store needs at least one example")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels: give one label per text")
    tokens = tokenize_texts(tokenizer, list(texts), max_length)
    counts = np.array([len(row) for row in tokens.ids], dtype=np.int32)
    if (counts == 0).any():
        raise ValueError(f"example {int(np.argmin(counts))} has no tokens: drop empty texts")

    def flat(rows: list[list], dtype) -> np.ndarray:
        return np.array([value for row in rows for value in row], dtype=dtype)

    return TokenLayout(
        token_id=flat(tokens.ids, np.int32),
        token_text=flat(tokens.text, object),
        position=np.concatenate([np.arange(c) for c in counts]).astype(np.int16),
        is_special=flat(tokens.special, bool),
        example_of_token=np.repeat(np.arange(len(counts), dtype=np.int32), counts),
        text=np.array([str(t) for t in texts], dtype=object),
        label=np.asarray(labels, dtype=np.int32),
        token_start=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64),
        token_count=counts,
        token_piece=flat(tokens.piece, object),
    )


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
