"""Planning an extraction: shards (chunk-aligned token ranges) and length-sorted batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerdrift.storage.schema import chunk_bounds


@dataclass(frozen=True)
class Shard:
    """One chunk-aligned token range [start, stop) and the examples that overlap it."""

    chunk: int
    start: int
    stop: int
    examples: tuple[int, ...]


def plan_shards(
    token_start: np.ndarray, token_count: np.ndarray, token_chunk: int, chunks: list[int]
) -> list[Shard]:
    """The shards of the given chunks.

    ``token_start`` (example,) and ``token_count`` (example,) place each example's tokens in
    the store; an example overlapping two chunks belongs to both shards.
    """
    starts = np.asarray(token_start, dtype=np.int64)
    ends = starts + np.asarray(token_count, dtype=np.int64)
    n_tokens = int(ends[-1]) if len(ends) else 0
    shards = []
    for chunk in chunks:
        start, stop = chunk_bounds(chunk, n_tokens, token_chunk)
        if start >= stop:
            raise ValueError(f"chunk {chunk} lies beyond the {n_tokens} tokens of the store")
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(starts, stop, side="left"))
        shards.append(Shard(chunk, start, stop, tuple(range(first, last))))
    return shards


def plan_batches(
    examples: tuple[int, ...] | list[int],
    token_count: np.ndarray,
    batch_size: int,
    max_padding: float = 0.25,
) -> list[np.ndarray]:
    """Split ``examples`` into length-sorted batches (longest first) of at most ``batch_size``.

    A batch is closed early when the next example would make more than ``max_padding`` of the
    batch's token slots padding (width = its longest example). Returns arrays of example
    indices; ties keep example order.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    counts = np.asarray(token_count)
    order = np.asarray(examples, dtype=np.int64)
    order = order[np.argsort(-counts[order], kind="stable")]
    batches: list[list[int]] = []
    width = real = 0
    for ex in order.tolist():
        n = int(counts[ex])
        if batches and len(batches[-1]) < batch_size:
            slots = (len(batches[-1]) + 1) * width
            if slots - (real + n) <= max_padding * slots:
                batches[-1].append(ex)
                real += n
                continue
        batches.append([ex])
        width = real = n
    return [np.asarray(batch, dtype=np.int64) for batch in batches]
