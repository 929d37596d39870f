"""Checking a run's Zarr stores chunk by chunk, and clearing what is damaged.

Zarr reads a missing chunk file as the array's fill value, so a lost or damaged file goes
unnoticed until something reads it, and then reads as NaN. These checks look at the files:

- **existence** (cheap: one listing per array): every chunk the activation manifest marks
  written, and every chunk of every other array, has a file;
- **size**: an activation chunk is raw float values plus a 4-byte CRC32C, so its size is
  known exactly;
- **checksum** (``full=True``: reads everything): decoding a chunk checks its CRC32C.

:func:`repair_activations` clears the manifest entries of damaged activation chunks (and
deletes their files), so the next extraction redoes exactly those. ``results.zarr`` holds
derived values only: :func:`repair_results` removes it, and the next run recomputes it from
the activation store and the SAEs without extracting or training anything again.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import fsspec
import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.codecs import BytesCodec, Crc32cCodec

from layerdrift.storage.activations import read_attrs, written_manifest
from layerdrift.storage.chunks import describe_chunk
from layerdrift.storage.schema import ACTIVATIONS, WRITTEN, chunk_bounds

logger = logging.getLogger(__name__)

CRC32C_BYTES = 4


@dataclass(frozen=True)
class Damage:
    """One damaged chunk (or a whole store that cannot be read)."""

    store: str  # URL of the Zarr store
    array: str  # path of the array inside the store ("" for the store itself)
    chunk: tuple[int, ...]  # chunk grid coordinates
    problem: str  # what is wrong: missing, its size, a checksum error
    where: str  # the chunk by meaning: checkpoint, layer and token range, or group

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


def _file_sizes(url: str, array: str) -> dict[str, int]:
    """Chunk key -> size in bytes of every chunk file of ``array``."""
    fs, root = fsspec.core.url_to_fs(url)
    prefix = f"{root.rstrip('/')}/{array}/" if array else f"{root.rstrip('/')}/"
    found = fs.find(f"{prefix}c", detail=True) if fs.exists(f"{prefix}c") else {}
    return {path[len(prefix) :]: int(info["size"]) for path, info in found.items()}


def _expected_size(arr: zarr.Array) -> int | None:
    """The size of every chunk file when the codecs are raw bytes + CRC32C, else None."""
    codecs = arr.metadata.codecs
    if [type(c) for c in codecs] != [BytesCodec, Crc32cCodec]:
        return None
    return math.prod(arr.chunks) * arr.dtype.itemsize + CRC32C_BYTES


def _grid(arr: zarr.Array) -> list[tuple[int, ...]]:
    return list(
        itertools.product(
            *(range(math.ceil(s / c)) for s, c in zip(arr.shape, arr.chunks, strict=True))
        )
    )


def _read_error(arr: zarr.Array, index: tuple[int, ...]) -> str | None:
    """Decode one chunk (which checks its CRC32C); the error text, or None when it reads."""
    selection = tuple(
        slice(i * c, min((i + 1) * c, s))
        for i, c, s in zip(index, arr.chunks, arr.shape, strict=True)
    )
    try:
        arr[selection]
    except Exception as error:  # any decoding failure is damage, whatever the codec says
        return f"unreadable ({type(error).__name__}: {error})"
    return None


def _check_chunks(url: str, path: str, labelled: list, full: bool) -> list[Damage]:
    """Existence, size and (``full``) checksum of chunks given as (grid index, label) pairs;
    ``labelled`` None means every chunk of the array, labelled by ``path``."""
    arr = zarr.open_array(url, path=path, mode="r")
    sizes = _file_sizes(url, path)
    expected = _expected_size(arr)
    if labelled is None:
        labelled = [(index, f"{path} chunk {index} of {url}") for index in _grid(arr)]
    damage = []
    for index, where in tqdm(labelled, desc=path, unit="chunk", disable=len(labelled) < 100):
        key = arr.metadata.encode_chunk_key(index)
        if key not in sizes:
            damage.append(Damage(url, path, index, "missing", where))
        elif expected is not None and sizes[key] != expected:
            problem = f"{sizes[key]} bytes, expected {expected}"
            damage.append(Damage(url, path, index, problem, where))
        elif full and (problem := _read_error(arr, index)):
            damage.append(Damage(url, path, index, problem, where))
    return damage


def check_activations(url: str, full: bool = True) -> list[Damage]:
    """Damaged chunks of the activation store at ``url`` (empty when there is no store)."""
    attrs = read_attrs(url)
    if attrs is None:
        return []
    if "schema_version" not in attrs:
        return [Damage(url, "", (), "creation was interrupted (no identity attributes)", url)]
    labelled = [
        ((int(i), layer, int(c), 0), describe_chunk(url, attrs, (int(i), layer, int(c), 0)))
        for i, c in np.argwhere(written_manifest(url))
        for layer in range(int(attrs["n_layers"]))
    ]
    damage = _check_chunks(url, ACTIVATIONS, labelled, full)
    group = zarr.open_group(url, mode="r")
    for name in sorted(set(group.array_keys()) - {ACTIVATIONS, WRITTEN}):
        damage += _check_chunks(url, name, None, full)
    return damage


def check_results(url: str, full: bool = True) -> list[Damage]:
    """Damaged chunks of every array of every group of the results store at ``url``."""
    try:
        root = zarr.open_group(url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return []
    damage = []
    for group_name, group in sorted(root.groups()):
        for name in sorted(group.array_keys()):
            damage += _check_chunks(url, f"{group_name}/{name}", None, full)
    return damage


def repair_activations(url: str, damage: list[Damage]) -> list[tuple[str, int]]:
    """Clear the manifest entries of the damaged activation chunks and delete their files.

    Returns the (checkpoint, token chunk) pairs cleared. A store whose creation was cut
    short or whose coordinates are damaged is removed whole: the next run creates it again.
    """
    attrs = read_attrs(url) or {}
    chunks = {d.chunk for d in damage if d.array == ACTIVATIONS}
    if any(d.array != ACTIVATIONS for d in damage):
        fs, root = fsspec.core.url_to_fs(url)
        fs.rm(root, recursive=True)
        logger.warning("removed %s: its metadata or coordinates were damaged", url)
        return []
    written = zarr.open_array(url, path=WRITTEN, mode="r+")
    activations = zarr.open_array(url, path=ACTIVATIONS, mode="r")
    fs, root = fsspec.core.url_to_fs(url)
    cleared = sorted({(i, c) for i, _, c, _ in chunks})
    for i, c in cleared:
        written[i, c] = False
        for layer in range(int(attrs["n_layers"])):
            key = activations.metadata.encode_chunk_key((i, layer, c, 0))
            path = f"{root.rstrip('/')}/{ACTIVATIONS}/{key}"
            if fs.exists(path):
                fs.rm(path)
        start, stop = chunk_bounds(c, int(attrs["n_tokens"]), int(attrs["token_chunk"]))
        logger.info(
            "cleared %s token chunk %d (tokens %d..%d)", attrs["checkpoints"][i], c, start, stop
        )
    return [(attrs["checkpoints"][i], c) for i, c in cleared]


def repair_results(url: str) -> None:
    """Remove the results store: every group in it is recomputed by the next run."""
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)
        logger.warning("removed %s: the next run recomputes it", url)
