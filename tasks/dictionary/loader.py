"""Streaming training batches from the activation store, seeded and resumable.

A loader reads one or more *sources* — (checkpoint, layer) pairs of the store — for the same
tokens at once, so one pass over the data can feed several SAEs (one per layer) or one
crosscoder (base and fine-tuned of a layer). Batches are [batch, n_sources, hidden] float32.

Order: each epoch shuffles the chunk order (seeded by ``(seed, epoch)``), groups the chunks
into buffers of ``buffer_chunks``, and shuffles the training tokens of each buffer. The
stream of token indices is therefore a pure function of the seed, so batch ``s`` starts at
token position ``s * batch_size`` of that stream, and a resumed loader only needs the step.

Examples, not tokens, are split into training and held-out (seeded), so no token of a
held-out example is ever yielded for training.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence

import dask
import numpy as np
import xarray as xr

logger = logging.getLogger(__name__)

# Store chunks a loader keeps in memory once read (float32, every source): the whole probe
# set of the quick and default presets (8 and 46 MB a source).
KEEP_BYTES = 256 * 2**20


def _here():
    """Compute the store's Dask-backed reads in the calling thread: inside a task on a Dask
    worker, the default would submit them to the cluster and wait for a free worker."""
    return dask.config.set(scheduler="synchronous")


def split_heldout(n_examples: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask [n_examples], True for held-out examples: a seeded random ``fraction``.

    At least one example is held out (when there are two or more).
    """
    rng = np.random.default_rng(seed)
    n_held = max(1, int(round(fraction * n_examples))) if n_examples > 1 else 0
    mask = np.zeros(n_examples, dtype=bool)
    mask[rng.permutation(n_examples)[:n_held]] = True
    return mask


def store_token_chunk(ds: xr.Dataset) -> int:
    """Tokens per store chunk (from the attributes or the activations' chunking)."""
    size = ds.attrs.get("token_chunk")
    if not size:
        chunks = ds["activations"].encoding.get("chunks") or ds["activations"].encoding.get(
            "preferred_chunks", {}
        ).get("token")
        size = chunks[2] if isinstance(chunks, tuple | list) else chunks
    return int(size or ds.sizes["token"])


class ActivationLoader:
    """Seeded training batches and held-out tokens of ``sources`` in a store Dataset.

    ``ds`` is the store opened with ``xarray.open_zarr`` (or ``storage.activations.open_store``);
    ``sources`` are (checkpoint label, layer) pairs read together for the same tokens.
    """

    def __init__(
        self,
        ds: xr.Dataset,
        sources: Sequence[tuple[str, int]],
        batch_size: int,
        heldout_fraction: float = 0.1,
        seed: int = 0,
        exclude_special: bool = False,
        buffer_chunks: int = 8,
        order_seed: int | None = None,
    ) -> None:
        with _here():
            self._setup(ds, sources, batch_size, heldout_fraction, seed, exclude_special)
        self.buffer_chunks = max(1, buffer_chunks)
        # The held-out split follows ``seed``; the token order may follow another seed, so a
        # control dictionary sees the same training tokens in another order.
        self.order_seed = seed if order_seed is None else order_seed

    def _setup(
        self,
        ds: xr.Dataset,
        sources: Sequence[tuple[str, int]],
        batch_size: int,
        heldout_fraction: float,
        seed: int,
        exclude_special: bool,
    ) -> None:
        """Index the sources, split the examples and list the chunks."""
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        labels = [str(c) for c in ds["checkpoint"].values.tolist()]
        layers = [int(v) for v in ds["layer"].values.tolist()]
        self._index: list[tuple[int, int]] = []
        for checkpoint, layer in sources:
            if checkpoint not in labels:
                raise KeyError(
                    f"checkpoint {checkpoint!r} is not in the activation store (it holds "
                    f"{labels}): extract it first or choose another checkpoint"
                )
            if layer not in layers:
                raise KeyError(f"layer {layer} is not in the activation store (layers {layers})")
            self._index.append((labels.index(checkpoint), layers.index(layer)))
        self.sources = list(sources)
        self.heldout_examples = split_heldout(ds.sizes["example"], heldout_fraction, seed)
        example_of_token = np.asarray(ds["example_of_token"].values)
        keep = np.ones(ds.sizes["token"], dtype=bool)
        if exclude_special:
            keep &= ~np.asarray(ds["is_special"].values, dtype=bool)
        self.train_mask = ~self.heldout_examples[example_of_token] & keep
        self.heldout_mask = self.heldout_examples[example_of_token] & keep
        if self.train_mask.sum() < batch_size:
            raise ValueError(
                f"only {int(self.train_mask.sum())} training tokens for a batch of {batch_size}: "
                "lower the training batch_size or extract more probe examples"
            )
        n_tokens, size = ds.sizes["token"], store_token_chunk(ds)
        self.chunks = [(a, min(a + size, n_tokens)) for a in range(0, n_tokens, size)]
        self._chunk_set = set(self.chunks)
        self._kept: dict[tuple[int, int], np.ndarray] = {}
        self._kept_bytes = 0

    @functools.cached_property
    def examples(self) -> dict[str, np.ndarray]:
        """Per-example ``token_start``, ``token_count`` and ``label`` [n_examples], and
        ``token_text`` [n_tokens], read from the store once (each ``.values`` of a lazy store
        variable is another read, over the network for remote stores)."""
        names = ("token_start", "token_count", "label", "token_text")
        with _here():
            return {name: np.asarray(self.ds[name].values) for name in names}

    @property
    def n_train_tokens(self) -> int:
        """Training tokens per epoch."""
        return int(self.train_mask.sum())

    @property
    def d_in(self) -> int:
        """Width of each source (the store's hidden size)."""
        return int(self.ds.sizes["hidden"])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of every source: [stop - start, n_sources, hidden] float32.

        A whole store chunk is kept in memory once read, while the kept chunks stay within
        :data:`KEEP_BYTES`, and handed out read-only: a token budget larger than the probe
        set reads every chunk once per epoch otherwise (the quick preset's SAEs, 50k tokens
        from 4.8k training tokens: ten times).
        """
        key = (start, stop)
        if key in self._kept:
            return self._kept[key]
        variable = self.ds["activations"].variable
        with _here():
            parts = [np.asarray(variable[c, li, start:stop].values) for c, li in self._index]
        block = np.stack(parts, axis=1).astype(np.float32, copy=False)
        if key in self._chunk_set and self._kept_bytes + block.nbytes <= KEEP_BYTES:
            block.setflags(write=False)
            self._kept[key] = block
            self._kept_bytes += block.nbytes
        return block

    def _epoch_plan(self, epoch: int) -> list[tuple[list[int], np.ndarray]]:
        """Per buffer: its chunk ids and its training token indices, shuffled."""
        rng = np.random.default_rng([self.order_seed, epoch])
        order = rng.permutation(len(self.chunks)).tolist()
        plan = []
        for g in range(0, len(order), self.buffer_chunks):
            group = order[g : g + self.buffer_chunks]
            tokens = np.concatenate(
                [
                    np.flatnonzero(self.train_mask[a:b]) + a
                    for a, b in (self.chunks[c] for c in group)
                ]
            )
            plan.append((group, tokens[rng.permutation(len(tokens))]))
        return plan

    def _gather(self, group: list[int], tokens: np.ndarray) -> np.ndarray:
        """Activations [len(tokens), n_sources, hidden] of ``tokens`` in the chunks ``group``."""
        bounds = [self.chunks[c] for c in sorted(group)]
        block = np.concatenate([self.read(a, b) for a, b in bounds])
        starts = np.array([a for a, _ in bounds])
        offsets = np.concatenate([[0], np.cumsum([b - a for a, b in bounds])[:-1]])
        which = np.searchsorted(starts, tokens, side="right") - 1
        return block[tokens - starts[which] + offsets[which]]

    def batches(self, start_step: int = 0) -> Iterator[np.ndarray]:
        """Endless training batches [batch_size, n_sources, hidden] from step ``start_step``.

        Buffers that a resumed stream has already passed are skipped without being read.
        """
        position = start_step * self.batch_size
        epoch, offset = divmod(position, self.n_train_tokens)
        pending = np.zeros((0, len(self._index), self.d_in), dtype=np.float32)
        while True:
            for group, tokens in self._epoch_plan(epoch):
                if offset >= len(tokens):
                    offset -= len(tokens)
                    continue
                fresh = self._gather(group, tokens[offset:])
                offset = 0
                pending = np.concatenate([pending, fresh]) if len(pending) else fresh
                while len(pending) >= self.batch_size:
                    yield pending[: self.batch_size]
                    pending = pending[self.batch_size :]
            epoch += 1

    def heldout(self, max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Held-out tokens in store order: (x [n, n_sources, hidden], token index [n])."""
        index = np.flatnonzero(self.heldout_mask)[:max_tokens]
        return self._read_tokens(index), index

    def sample(self, n_tokens: int, seed: int | None = None) -> np.ndarray:
        """A random sample of up to ``n_tokens`` training tokens: [n, n_sources, hidden]."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        train = np.flatnonzero(self.train_mask)
        index = np.sort(rng.choice(train, size=min(n_tokens, len(train)), replace=False))
        return self._read_tokens(index)

    def _read_tokens(self, index: np.ndarray) -> np.ndarray:
        """Activations of sorted token ``index``, read chunk by chunk: [n, n_sources, hidden]."""
        out = np.zeros((len(index), len(self._index), self.d_in), dtype=np.float32)
        for a, b in self.chunks:
            lo, hi = np.searchsorted(index, [a, b])
            if hi > lo:
                out[lo:hi] = self.read(a, b)[index[lo:hi] - a]
        return out
