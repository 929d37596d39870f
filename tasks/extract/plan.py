"""Planning an extraction: windows of store chunks and the length-sorted batches of each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerdrift.storage.schema import chunk_bounds, n_chunks

# Bytes of stored activations one window may hold in memory before its chunks are written.
# Sorting a whole window by length is what removes padding: on the bundled default's probe
# set one window left 6.6% of the batch slots padding where one chunk per sort left 24%
# (benchmarks/extract.py), and no example straddling a chunk edge is forwarded twice.
WINDOW_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Window:
    """Consecutive store chunks whose examples are length-sorted and forwarded as one set.

    ``chunks`` are every chunk of the window (written or not), covering the token range
    [start, stop); ``examples`` every example overlapping it.
    """

    chunks: tuple[int, ...]
    start: int
    stop: int
    examples: tuple[int, ...]


def window_chunks(token_chunk: int, bytes_per_token: int, window_bytes: int = WINDOW_BYTES) -> int:
    """How many chunks one window spans: as many as fit ``window_bytes``, at least one."""
    return max(1, window_bytes // max(1, token_chunk * bytes_per_token))


def plan_windows(
    token_start: np.ndarray, token_count: np.ndarray, token_chunk: int, chunks_per_window: int
) -> list[Window]:
    """Every window of the store: chunks 0 … k-1, k … 2k-1, and so on.

    The plan depends on the store alone, never on which chunks are still missing, so a
    resumed extraction forwards the same batches as an uninterrupted one and writes the
    same bytes. ``token_start`` (example,) and ``token_count`` (example,) place each
    example's tokens in the store; an example overlapping two windows belongs to both.
    """
    if chunks_per_window <= 0:
        raise ValueError(f"chunks_per_window must be positive, got {chunks_per_window}")
    starts = np.asarray(token_start, dtype=np.int64)
    ends = starts + np.asarray(token_count, dtype=np.int64)
    n_tokens = int(ends[-1]) if len(ends) else 0
    windows = []
    for first_chunk in range(0, n_chunks(n_tokens, token_chunk), chunks_per_window):
        chunks = tuple(
            range(
                first_chunk, min(first_chunk + chunks_per_window, n_chunks(n_tokens, token_chunk))
            )
        )
        start = chunk_bounds(chunks[0], n_tokens, token_chunk)[0]
        stop = chunk_bounds(chunks[-1], n_tokens, token_chunk)[1]
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(starts, stop, side="left"))
        windows.append(Window(chunks, start, stop, tuple(range(first, last))))
    return windows


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
