"""Schema version 1 of the activation store: names, token layout, identity, errors.

The store is a Zarr v3 group that plain ``xarray.open_zarr`` reads (see DESIGN.md):

- ``activations`` (checkpoint, layer, token, hidden), chunks (1, 1, token_chunk, hidden),
  crc32c-checksummed, NaN where nothing was written yet;
- token coordinates ``token_id``, ``token_text`` (readable), ``token_piece`` (the raw
  vocabulary piece; stores made before it existed lack it), ``position``, ``is_special``,
  ``example_of_token``; example variables ``text``, ``label``, ``token_start``,
  ``token_count``;
- ``written`` (checkpoint, token_chunk): the completion manifest, one Zarr chunk per entry so
  that writers of different chunks never rewrite each other's entries;
- attributes: :data:`SCHEMA_VERSION`, the identity (below) and a generation id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 1
ACTIVATIONS = "activations"
WRITTEN = "written"
LOCK_FILE = "writer.lock"
IDENTITY_KEYS = (
    "schema_version",
    "config_hash",
    "dataset",
    "tokenizer",
    "checkpoints",
    "models",
    "n_layers",
    "hidden",
    "n_tokens",
    "token_chunk",
    "dtype",
)


class StoreError(ValueError):
    """Base class of activation-store errors that retrying cannot fix."""


class StoreSchemaError(StoreError):
    """The store is missing, or is not a layerdrift store of the supported schema version."""


class StoreMismatchError(StoreError):
    """The store, or a checkpoint, does not match what the caller asked for."""


class StoreIncompleteError(StoreError):
    """Some token chunks of some checkpoints have not been written yet."""


class ChunkReadError(OSError):
    """One stored chunk could not be read or failed its checksum."""


class ChunkMissingError(ChunkReadError):
    """A chunk that the manifest marks written has no file."""


@dataclass(frozen=True)
class TokenLayout:
    """Every non-padding token of the probe set, example after example.

    Token arrays have shape (token,), example arrays shape (example,). ``token_text`` is
    readable (``movie``), ``token_piece`` the tokenizer's piece (``Ġmovie``).
    """

    token_id: np.ndarray  # int32 (token,)
    token_text: np.ndarray  # object str (token,)
    position: np.ndarray  # int16 (token,)
    is_special: np.ndarray  # bool (token,)
    example_of_token: np.ndarray  # int32 (token,)
    text: np.ndarray  # object str (example,)
    label: np.ndarray  # int32 (example,)
    token_start: np.ndarray  # int64 (example,)
    token_count: np.ndarray  # int32 (example,)
    token_piece: np.ndarray | None = None  # object str (token,): the raw vocabulary piece

    @property
    def n_tokens(self) -> int:
        """Number of stored tokens."""
        return int(self.token_id.shape[0])

    @property
    def n_examples(self) -> int:
        """Number of probe examples."""
        return int(self.text.shape[0])


@dataclass(frozen=True)
class StoreIdentity:
    """What a store was made from. Two stores with equal identities hold the same numbers.

    ``models`` maps each checkpoint label to ``{model_type, num_hidden_layers, hidden_size,
    weights_sha256}``; ``dataset`` is the data stage's identity (name, source, sha256, ...);
    ``tokenizer`` is :func:`tasks.modeling.tokenizer_fingerprint` of the run's tokenizer.
    """

    config_hash: str
    dataset: dict
    tokenizer: str
    checkpoints: tuple[str, ...]
    models: dict[str, dict]
    n_layers: int  # layer 0 = embeddings ... L, so L + 1 entries
    hidden: int
    n_tokens: int
    token_chunk: int
    dtype: str = "float16"
    schema_version: int = field(default=SCHEMA_VERSION)

    def to_attrs(self) -> dict:
        """The identity as JSON-ready store attributes."""
        attrs = {key: getattr(self, key) for key in IDENTITY_KEYS}
        attrs["checkpoints"] = list(self.checkpoints)
        return json.loads(json.dumps(attrs))

    def differences(self, attrs: dict) -> list[str]:
        """Keys on which the stored attributes ``attrs`` differ from this identity."""
        mine = self.to_attrs()
        return [key for key in IDENTITY_KEYS if mine[key] != attrs.get(key)]


def n_chunks(n_tokens: int, token_chunk: int) -> int:
    """Number of token chunks: ceil(n_tokens / token_chunk)."""
    return -(-n_tokens // token_chunk)


def chunk_bounds(chunk: int, n_tokens: int, token_chunk: int) -> tuple[int, int]:
    """The token range [start, stop) of one chunk."""
    start = chunk * token_chunk
    return start, min(start + token_chunk, n_tokens)
