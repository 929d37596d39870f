"""Planning an extraction: shards (chunk-aligned token ranges) and length-sorted batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.schema import chunk_bounds


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
    examples: tuple[int, ...] | list[int], token_count: np.ndarray, batch_size: int
) -> list[np.ndarray]:
    """Split ``examples`` into batches of at most ``batch_size``, longest first.

    Sorting by length (stable, ties by example index) keeps padding small. Returns arrays of
    example indices.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.asarray(examples, dtype=np.int64)
    order = order[np.argsort(-np.asarray(token_count)[order], kind="stable")]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
