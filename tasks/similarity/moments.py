"""Exact one-pass moments of pairs of representations, accumulated by Dask in float64.

A *representation* is one (checkpoint, layer) slice of the activation store, an (n, d) matrix
over the selected tokens. Every similarity metric in :mod:`tasks.similarity.metrics` is a
function of the moments below, so one pass over the store, in O(d²) memory per pair and
independent of n, gives all of them exactly.

Each representation ``X`` is accumulated after subtracting a fixed ``shift`` vector (the mean
of its first selected token block). Centred statistics and the unbiased HSIC estimator are
invariant to that shift, and it keeps the float64 sums well conditioned when activations
have large means. Per-token cosines and norms are taken on the raw vectors.

With ``x_i`` the shifted rows, ``d_i = ||x_i||²`` (and ``y_i``, ``e_i`` for the other side):

- :class:`SelfMoments`: n, Σx (d), XᵀX (d, d), Σd_i, Σd_i², Σd_i·x_i (d), Σ||raw x_i||;
- :class:`CrossMoments`: XᵀY (d1, d2), Σcos(raw x_i, raw y_i), Σd_i·e_i, Σd_i·y_i (d2),
  Σe_i·x_i (d1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

ROWS_PER_STEP = 2048  # rows converted to float64 at a time inside a token block


@dataclass(frozen=True, eq=False)
class SelfMoments:
    """Moments of one representation (shifted rows ``x_i = raw_i - shift``)."""

    n: float
    shift: np.ndarray  # (d,)
    total: np.ndarray  # (d,)  Σ x_i
    gram: np.ndarray  # (d, d)  Xᵀ X
    sq_norm_sum: float  # Σ d_i
    sq_norm_sq_sum: float  # Σ d_i²
    sq_norm_weighted: np.ndarray  # (d,)  Σ d_i x_i
    raw_norm_sum: float  # Σ ||raw_i||

    @property
    def dim(self) -> int:
        """Hidden size d."""
        return self.total.shape[0]

    @cached_property
    def covariance(self) -> np.ndarray:
        """Centred covariance (d, d), computed once."""
        return (self.gram - np.outer(self.total, self.total) / self.n) / self.n

    @cached_property
    def eigen(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (d,) in descending order and eigenvectors (d, d) of the covariance."""
        values, vectors = np.linalg.eigh(self.covariance)
        return values[::-1].copy(), vectors[:, ::-1].copy()


@dataclass(frozen=True)
class CrossMoments:
    """Moments of a pair (X, Y) of representations over the same tokens."""

    n: float
    cross: np.ndarray  # (d1, d2)  Xᵀ Y
    cos_sum: float  # Σ cos(raw x_i, raw y_i)
    sq_norm_product_sum: float  # Σ d_i e_i
    y_weighted: np.ndarray  # (d2,)  Σ d_i y_i
    x_weighted: np.ndarray  # (d1,)  Σ e_i x_i

    def swapped(self) -> CrossMoments:
        """The moments of (Y, X)."""
        return replace(
            self, cross=self.cross.T, y_weighted=self.x_weighted, x_weighted=self.y_weighted
        )


def self_as_cross(moments: SelfMoments) -> CrossMoments:
    """The cross moments of a representation with itself (every token has cosine 1)."""
    return CrossMoments(
        n=moments.n,
        cross=moments.gram,
        cos_sum=moments.n,
        sq_norm_product_sum=moments.sq_norm_sq_sum,
        y_weighted=moments.sq_norm_weighted,
        x_weighted=moments.sq_norm_weighted,
    )


# Packing: a pass returns one flat float64 vector per token block, so Dask can tree-sum it.


def self_fields(d: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the packed fields of :class:`SelfMoments` (without the shift)."""
    return [
        ("n", ()),
        ("total", (d,)),
        ("gram", (d, d)),
        ("sq_norm_sum", ()),
        ("sq_norm_sq_sum", ()),
        ("sq_norm_weighted", (d,)),
        ("raw_norm_sum", ()),
    ]


def cross_fields(d1: int, d2: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the packed fields of :class:`CrossMoments`."""
    return [
        ("n", ()),
        ("cross", (d1, d2)),
        ("cos_sum", ()),
        ("sq_norm_product_sum", ()),
        ("y_weighted", (d2,)),
        ("x_weighted", (d1,)),
    ]


def field_size(fields: list[tuple[str, tuple[int, ...]]]) -> int:
    """Number of float64 values the fields occupy."""
    return int(sum(np.prod(shape, dtype=np.int64) for _, shape in fields))


def pack(values: dict[str, object], fields: list[tuple[str, tuple[int, ...]]]) -> np.ndarray:
    """Concatenate the fields of ``values`` into one flat float64 vector."""
    return np.concatenate(
        [np.ravel(np.asarray(values[name], dtype=np.float64)) for name, _ in fields]
    )


def unpack(flat: np.ndarray, fields: list[tuple[str, tuple[int, ...]]]) -> dict[str, object]:
    """Inverse of :func:`pack`: scalars become floats, the rest arrays of their shapes."""
    out: dict[str, object] = {}
    offset = 0
    for name, shape in fields:
        size = int(np.prod(shape, dtype=np.int64))
        chunk = flat[offset : offset + size]
        out[name] = float(chunk[0]) if shape == () else chunk.reshape(shape).copy()
        offset += size
    return out


# The per-block kernel ------------------------------------------------------------------------


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b, optimize=True)


def block_moments(
    blocks: list[np.ndarray],
    shifts: Sequence[np.ndarray],
    self_reps: list[int],
    pairs: list[tuple[int, int]],
    rows_per_step: int = ROWS_PER_STEP,
) -> tuple[list[dict], list[dict]]:
    """Partial moments of one token block.

    ``blocks`` are the representations' rows of the block, each (t, d_r) of any float dtype
    (already restricted to the selected tokens); ``shifts`` the fixed shifts, each (d_r,). Returns
    the partial :class:`SelfMoments` fields for ``self_reps`` and :class:`CrossMoments`
    fields for ``pairs`` (indices into ``blocks``), as dicts, summed over the block's rows.
    """
    selves = [_zero_self(blocks[r].shape[1]) for r in self_reps]
    crosses = [_zero_cross(blocks[a].shape[1], blocks[b].shape[1]) for a, b in pairs]
    n_rows = blocks[0].shape[0] if blocks else 0
    shift_sq = [float(s @ s) for s in shifts]
    for start in range(0, n_rows, rows_per_step):
        xs, sq, raw_sq = {}, {}, {}
        for r in {*self_reps, *(i for p in pairs for i in p)}:
            x = blocks[r][start : start + rows_per_step].astype(np.float64) - shifts[r]
            xs[r], sq[r] = x, _rowdot(x, x)
            raw_sq[r] = sq[r] + 2.0 * (x @ shifts[r]) + shift_sq[r]
        for acc, r in zip(selves, self_reps, strict=True):
            x = xs[r]
            acc["n"] += x.shape[0]
            acc["total"] += x.sum(axis=0)
            acc["gram"] += x.T @ x
            acc["sq_norm_sum"] += sq[r].sum()
            acc["sq_norm_sq_sum"] += sq[r] @ sq[r]
            acc["sq_norm_weighted"] += sq[r] @ x
            acc["raw_norm_sum"] += np.sqrt(np.maximum(raw_sq[r], 0.0)).sum()
        for acc, (a, b) in zip(crosses, pairs, strict=True):
            x, y = xs[a], xs[b]
            acc["n"] += x.shape[0]
            acc["cross"] += x.T @ y
            acc["cos_sum"] += _cosine_sum(x, y, shifts[a], shifts[b], raw_sq[a], raw_sq[b])
            acc["sq_norm_product_sum"] += sq[a] @ sq[b]
            acc["y_weighted"] += sq[a] @ y
            acc["x_weighted"] += sq[b] @ x
    return selves, crosses


def _cosine_sum(
    x: np.ndarray, y: np.ndarray, shift_x: np.ndarray, shift_y: np.ndarray,
    raw_sq_x: np.ndarray, raw_sq_y: np.ndarray,
) -> float:  # fmt: skip
    """Σ_i cos(raw x_i, raw y_i) from shifted rows; NaN when the widths differ."""
    if x.shape[1] != y.shape[1]:
        return float("nan")
    raw_dot = _rowdot(x, y) + x @ shift_y + y @ shift_x + float(shift_x @ shift_y)
    denom = np.sqrt(np.maximum(raw_sq_x, 0.0) * np.maximum(raw_sq_y, 0.0))
    return float(np.divide(raw_dot, denom, out=np.zeros_like(raw_dot), where=denom > 0).sum())


def _zero_self(d: int) -> dict:
    return {name: np.zeros(shape) if shape else 0.0 for name, shape in self_fields(d)}


def _zero_cross(d1: int, d2: int) -> dict:
    return {name: np.zeros(shape) if shape else 0.0 for name, shape in cross_fields(d1, d2)}


def moments_from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    shift_x: np.ndarray | None = None,
    shift_y: np.ndarray | None = None,
) -> tuple[SelfMoments, SelfMoments, CrossMoments]:
    """In-memory moments of X (n, d1) and Y (n, d2): the reference the Dask pass must match."""
    shifts = [
        np.zeros(x.shape[1]) if shift_x is None else np.asarray(shift_x, np.float64),
        np.zeros(y.shape[1]) if shift_y is None else np.asarray(shift_y, np.float64),
    ]
    selves, crosses = block_moments([x, y], shifts, [0, 1], [(0, 1)])
    sx = SelfMoments(shift=shifts[0], **selves[0])
    sy = SelfMoments(shift=shifts[1], **selves[1])
    return sx, sy, CrossMoments(**crosses[0])
