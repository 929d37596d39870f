"""Seeded factories for tests: a tiny BERT, a tiny tokenizer, separable texts, small stores.

Everything is built in the test, offline: a ``BertConfig`` with 2 layers and hidden 32 and a
WordPiece tokenizer over a vocabulary of a few dozen words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE_WORDS = ["good", "great", "excellent", "wonderful", "superb", "lovely"]
NEGATIVE_WORDS = ["bad", "awful", "terrible", "dreadful", "poor", "boring"]
FILLER_WORDS = [
    "the", "movie", "film", "was", "a", "plot", "actor", "story", "really", "quite",
    "and", "it", "this", "very", "scene", "music", "end", "##s", "##ly",
]  # fmt: skip
VOCAB = SPECIAL_TOKENS + POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS


def make_tokenizer(folder: Path):
    """Save a WordPiece tokenizer over :data:`VOCAB` into ``folder`` and return it."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(VOCAB)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_tiny_bert(folder: Path, num_labels: int = 2, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer, hidden-32 BERT classifier and its tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder, safe_serialization=True)
    make_tokenizer(folder)
    return folder


def separable_texts(n: int, seed: int = 0, num_labels: int = 2) -> pd.DataFrame:
    """Texts whose label is given by one sentiment word among neutral filler words.

    Returns a frame with columns ``text`` and ``label`` (``neg``/``pos``).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % num_labels
        words = list(rng.choice(FILLER_WORDS[:-2], size=rng.integers(3, 9)))
        cue = rng.choice(POSITIVE_WORDS if label == 1 else NEGATIVE_WORDS)
        words.insert(int(rng.integers(0, len(words) + 1)), cue)
        # A unique suffix keeps texts distinct so cleaning drops nothing.
        rows.append({"text": " ".join(words) + f" {i}", "label": ["neg", "pos"][label]})
    return pd.DataFrame(rows)


def make_activation_store(
    path: str,
    activations: np.ndarray,
    tokens_per_example: list[int],
    labels: list[int] | None = None,
    checkpoints: list[str] | None = None,
    token_chunk: int = 64,
    seed: int = 0,
) -> str:
    """Write a schema-1 activation store with plain xarray, for tests of readers.

    ``activations`` has shape (checkpoint, layer, token, hidden); ``tokens_per_example`` sums
    to the token count. The first token of each example is flagged special.
    """
    import xarray as xr

    n_ckpt, n_layer, n_token, n_hidden = activations.shape
    assert sum(tokens_per_example) == n_token
    rng = np.random.default_rng(seed)
    if checkpoints is None:
        checkpoints = ["base", "final"] if n_ckpt == 2 else [f"c{i}" for i in range(n_ckpt)]
    labels = labels if labels is not None else [i % 2 for i in range(len(tokens_per_example))]
    starts = np.concatenate([[0], np.cumsum(tokens_per_example)[:-1]]).astype(np.int64)
    example_of_token = np.repeat(np.arange(len(tokens_per_example)), tokens_per_example)
    position = np.concatenate([np.arange(c) for c in tokens_per_example]).astype(np.int16)
    n_chunks = -(-n_token // token_chunk)
    texts = np.array([f"ex {i}" for i in range(len(tokens_per_example))], dtype=object)
    ds = xr.Dataset(
        {
            "activations": (("checkpoint", "layer", "token", "hidden"), activations),
            "text": (("example",), texts),
            "label": (("example",), np.asarray(labels, dtype=np.int32)),
            "token_start": (("example",), starts),
            "token_count": (("example",), np.asarray(tokens_per_example, dtype=np.int32)),
            "written": (("checkpoint", "token_chunk"), np.ones((n_ckpt, n_chunks), dtype=bool)),
        },
        coords={
            "checkpoint": np.array(checkpoints, dtype=object),
            "layer": np.arange(n_layer),
            "token_id": ("token", rng.integers(5, 30, n_token).astype(np.int32)),
            "token_text": ("token", np.array([f"t{i}" for i in range(n_token)], dtype=object)),
            "position": ("token", position),
            "is_special": ("token", position == 0),
            "example_of_token": ("token", example_of_token.astype(np.int32)),
        },
        attrs={
            "schema_version": 1,
            "token_chunk": token_chunk,
            "checkpoints": list(checkpoints),
            "generation": f"test-{seed}",
        },
    )
    encoding = {"activations": {"chunks": (1, 1, token_chunk, n_hidden)}}
    ds.to_zarr(path, mode="w", encoding=encoding, consolidated=True, zarr_format=3)
    return path


def set_store_generation(url: str, generation: str) -> None:
    """Give the store at ``url`` another generation id, as a rebuild would."""
    import zarr

    zarr.open_group(url, mode="r+").attrs.update(generation=generation)
    zarr.consolidate_metadata(url)


def write_results_from_schema(
    url: str,
    rng: np.random.Generator,
    coords: dict,
    stages: tuple[str, ...] = ("similarity", "sae", "features"),
    overrides: dict | None = None,
) -> dict:
    """Write every results group the schema declares for ``stages``, with random values.

    ``coords`` holds the labels of each open dim (``checkpoint``, ``layer``, ``bin`` …) and
    the non-dimension coordinates a group declares (``token_text``, ``bin_upper`` …, each
    as ``(dim, values)``); fixed-label dims take the schema's labels unless given. A group
    with an open dim or a coordinate that ``coords`` does not give is not written.
    ``overrides`` maps a group name to its own values or to a dict of coords for it.
    Returns the arrays written, by group name.
    """
    from layerdrift.storage.results import write_result
    from layerdrift.storage.results_schema import RESULT_GROUPS

    overrides = overrides or {}
    written = {}
    for group in RESULT_GROUPS.values():
        if group.stage not in stages:
            continue
        own = {**coords, **overrides.get(group.name, {})}
        if any(d not in own and d not in group.labels for d in group.dims) or any(
            name not in own for name in group.coords
        ):
            continue  # a group of other runs (a run of several tasks: ``pair``, ``task``)
        dims = {d: own[d] for d in group.dims if d in own}
        shape = group.shape({d: len(v) for d, v in dims.items()})
        if group.dtype == "int":
            values = rng.integers(0, 50, size=shape)
        else:
            values = rng.uniform(0.0, 1.0, size=shape)
        extra = {name: own[name] for name in group.coords}
        array = group.new(values, **dims, **extra)
        write_result(url, group.name, array)
        written[group.name] = array
    return written
