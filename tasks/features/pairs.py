"""Paired (base, fine-tuned) token activations of one layer, streamed from the store.

The crosscoder sees the same token in both models at once, so each batch is
[batch, 2, hidden]. Tokens are read a whole store chunk at a time from both checkpoints,
shuffled within a buffer of chunks, and held-out examples never enter training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import xarray as xr

logger = logging.getLogger(__name__)


def open_store(url: str) -> xr.Dataset:
    """The activation store as an xarray Dataset without Dask (lazy, slice-wise reads)."""
    try:
        return xr.open_zarr(url, chunks=None)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"no activation store at {url}: run the extract stage") from error


def split_heldout(n_examples: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask [n_examples], True for the held-out examples (a seeded random share)."""
    rng = np.random.default_rng(seed)
    n_held = max(1, int(round(fraction * n_examples))) if n_examples > 1 else 0
    mask = np.zeros(n_examples, dtype=bool)
    mask[rng.permutation(n_examples)[:n_held]] = True
    return mask


@dataclass(frozen=True)
class PairSource:
    """Where paired activations come from: store, layer, the two checkpoints, token filter."""

    url: str
    layer: int
    checkpoints: tuple[str, str]
    heldout_fraction: float = 0.1
    exclude_special: bool = False
    seed: int = 0

    def token_mask(self, ds: xr.Dataset, heldout: bool | None) -> np.ndarray:
        """Tokens [n_token] of the training (held-out; None: all) examples, minus specials."""
        missing = [c for c in self.checkpoints if c not in ds.checkpoint.values.tolist()]
        if missing:
            raise KeyError(
                f"checkpoints {missing} are not in the store {self.url} (it holds "
                f"{ds.checkpoint.values.tolist()}): extract them or compare other checkpoints"
            )
        written = ds["written"].sel(checkpoint=list(self.checkpoints)).values
        if not written.all():
            raise RuntimeError(
                f"the store {self.url} is incomplete for {list(self.checkpoints)} "
                f"({int((~written).sum())} token chunks missing): finish the extract stage"
            )
        mask = np.ones(ds.sizes["token"], dtype=bool)
        if heldout is not None:
            held = self.heldout_examples(ds.sizes["example"])
            mask = held[ds.example_of_token.values] == heldout
        if self.exclude_special:
            mask &= ~ds.is_special.values
        return mask

    def heldout_examples(self, n_examples: int) -> np.ndarray:
        """Boolean mask [n_examples] of the held-out examples."""
        return split_heldout(n_examples, self.heldout_fraction, self.seed)

    def read(self, ds: xr.Dataset, start: int, stop: int) -> np.ndarray:
        """Activations of tokens [start, stop) in both checkpoints: [n, 2, hidden] float32."""
        acts = ds.activations.sel(checkpoint=list(self.checkpoints), layer=self.layer)
        block = acts.isel(token=slice(start, stop)).values  # [2, n, hidden]
        return np.ascontiguousarray(block.transpose(1, 0, 2), dtype=np.float32)


def chunk_bounds(ds: xr.Dataset) -> list[tuple[int, int]]:
    """Token ranges of the store's chunks (the unit of reading)."""
    n = ds.sizes["token"]
    size = int(ds.attrs.get("token_chunk") or ds.activations.encoding.get("chunks", [0] * 3)[2])
    size = size or n
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def paired_batches(
    source: PairSource, batch_size: int, buffer_chunks: int = 8, start_step: int = 0
) -> Iterator[np.ndarray]:
    """Endless seeded stream of training batches [batch_size, 2, hidden] (float32).

    Each epoch visits the chunks in a new seeded order, buffers ``buffer_chunks`` of them,
    shuffles their tokens and cuts batches. ``start_step`` skips that many batches, so a
    resumed run sees exactly the batches an uninterrupted one would.
    """
    ds = open_store(source.url)
    mask = source.token_mask(ds, heldout=False)
    if mask.sum() < batch_size:
        raise ValueError(
            f"only {int(mask.sum())} training tokens in {source.url} for a batch of "
            f"{batch_size}: lower the batch size or extract more examples"
        )
    bounds = chunk_bounds(ds)
    step, epoch = 0, 0
    while True:
        rng = np.random.default_rng([source.seed, epoch])
        order = rng.permutation(len(bounds))
        carry = np.zeros((0, 2, ds.sizes["hidden"]), dtype=np.float32)
        for i in range(0, len(order), buffer_chunks):
            parts = [carry]
            for c in order[i : i + buffer_chunks]:
                a, b = bounds[c]
                if mask[a:b].any():
                    parts.append(source.read(ds, a, b)[mask[a:b]])
            pool = np.concatenate(parts)
            pool = pool[rng.permutation(len(pool))]
            n_full = len(pool) // batch_size
            for j in range(n_full):
                if step >= start_step:
                    yield pool[j * batch_size : (j + 1) * batch_size]
                step += 1
            carry = pool[n_full * batch_size :]
        epoch += 1


def heldout_pairs(source: PairSource, max_tokens: int | None = None) -> np.ndarray:
    """The held-out tokens of both checkpoints, in store order: [n, 2, hidden] float32."""
    ds = open_store(source.url)
    mask = source.token_mask(ds, heldout=True)
    index = np.flatnonzero(mask)[:max_tokens]
    if index.size == 0:
        return np.zeros((0, 2, ds.sizes["hidden"]), dtype=np.float32)
    block = source.read(ds, int(index[0]), int(index[-1]) + 1)
    return block[index - index[0]]
