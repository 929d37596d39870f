"""Reading activation chunks by name: a missing chunk raises, a damaged one names itself.

Zarr reads a missing chunk file as the array's fill value (NaN for activations). The
:class:`ChunkReader` that :func:`storage.activations.open_store` wraps around the Zarr array
checks, before every read, that each chunk the manifest marks written has its file, and
turns any read error into one that names the chunk by checkpoint, layer and token range.
"""

from __future__ import annotations

import itertools

import fsspec
import numpy as np
import zarr

from layerdrift.storage.schema import (
    ACTIVATIONS,
    ChunkMissingError,
    ChunkReadError,
    chunk_bounds,
)


def _chunks_touched(key: tuple, shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple]:
    """Grid coordinates of every chunk that the selection ``key`` (ints and slices) reads."""
    ranges = []
    for axis, size in enumerate(chunks):
        selection = key[axis] if axis < len(key) else slice(None)
        if isinstance(selection, slice):
            start, stop, _ = selection.indices(shape[axis])
            ranges.append(range(start // size, max(start, stop - 1) // size + 1))
        else:
            index = int(selection) % shape[axis]
            ranges.append(range(index // size, index // size + 1))
    return [tuple(index) for index in itertools.product(*ranges)]


class ChunkReader:
    """Array-like over the Zarr activations whose read errors name the chunk.

    Zarr reads a missing chunk file as its fill value (NaN); a chunk that the manifest marks
    written must exist, so its absence raises :class:`ChunkMissingError` instead.
    """

    def __init__(self, url: str, array: zarr.Array, attrs: dict, manifest: np.ndarray) -> None:
        self.url, self.array, self.attrs, self.manifest = url, array, attrs, manifest
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.fs, root = fsspec.core.url_to_fs(url)
        self.array_root = f"{root.rstrip('/')}/{ACTIVATIONS}"

    def _check_present(self, key: tuple) -> None:
        for index in _chunks_touched(key, self.shape, self.array.chunks):
            if not self.manifest[index[0], index[2]]:
                continue  # never written: NaN by design (open_store(allow_partial=True))
            path = f"{self.array_root}/{self.array.metadata.encode_chunk_key(index)}"
            if not self.fs.exists(path):
                raise ChunkMissingError(
                    f"{describe_chunk(self.url, self.attrs, index)} is marked written but its "
                    "file is missing: `layerdrift verify <run> --repair` clears its manifest "
                    "entry so that the next `layerdrift run` extracts it again"
                )

    def __getitem__(self, key):
        self._check_present(key if isinstance(key, tuple) else (key,))
        try:
            return self.array[key]
        except Exception as error:
            index = _chunks_touched(
                key if isinstance(key, tuple) else (key,), self.shape, self.array.chunks
            )
            raise ChunkReadError(
                f"cannot read {describe_chunk(self.url, self.attrs, index[0])}: {error}; the "
                "file is corrupt or unreadable: `layerdrift verify <run> --repair` clears its "
                "manifest entry so that the next `layerdrift run` extracts it again"
            ) from error


def describe_chunk(url: str, attrs: dict, index: tuple[int, ...]) -> str:
    """Name one activation chunk by file, checkpoint, layer and token range."""
    checkpoints = attrs["checkpoints"]
    ckpt = checkpoints[index[0]] if index[0] < len(checkpoints) else "?"
    start, stop = chunk_bounds(index[2], int(attrs["n_tokens"]), int(attrs["token_chunk"]))
    file = "/".join([ACTIVATIONS, "c", *map(str, index)])
    return (
        f"chunk {file} of {url} (checkpoint={ckpt!r}, layer={index[1]}, token chunk "
        f"{index[2]}: tokens {start}..{stop})"
    )
