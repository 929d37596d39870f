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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

ROWS_PER_STEP = 2048  # rows multiplied at a time inside a token block
MULTIPLY_DTYPE = np.float64  # dtype of the d×d products (summed in float64); see block_moments


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
    # Derived matrices, computed once on first use. A plain dict rather than cached_property,
    # whose per-class lock (Python 3.11) would serialise the metrics' worker threads.
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def dim(self) -> int:
        """Hidden size d."""
        return self.total.shape[0]

    @property
    def covariance(self) -> np.ndarray:
        """Centred covariance (d, d), computed once."""
        if "covariance" not in self._derived:
            cov = (self.gram - np.outer(self.total, self.total) / self.n) / self.n
            self._derived["covariance"] = (cov + cov.T) / 2.0  # exactly symmetric
        return self._derived["covariance"]

    @property
    def eigen(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (d,) in descending order and eigenvectors (d, d) of the covariance."""
        if "eigen" not in self._derived:
            values, vectors = np.linalg.eigh(self.covariance)
            self._derived["eigen"] = (values[::-1].copy(), vectors[:, ::-1].copy())
        return self._derived["eigen"]


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


def _spans(
    fields: list[tuple[str, tuple[int, ...]]],
) -> Iterator[tuple[str, tuple[int, ...], slice]]:
    """Each field's name, shape and place in a packed vector, in :func:`pack`'s order."""
    offset = 0
    for name, shape in fields:
        size = int(np.prod(shape, dtype=np.int64))
        yield name, shape, slice(offset, offset + size)
        offset += size


def unpack(flat: np.ndarray, fields: list[tuple[str, tuple[int, ...]]]) -> dict[str, object]:
    """Inverse of :func:`pack`: scalars become floats, the rest arrays of their shapes."""
    out: dict[str, object] = {}
    for name, shape, at in _spans(fields):
        chunk = flat[at]
        out[name] = float(chunk[0]) if shape == () else chunk.reshape(shape).copy()
    return out


def unpack_columns(
    flats: np.ndarray, fields: list[tuple[str, tuple[int, ...]]]
) -> dict[str, np.ndarray]:
    """:func:`unpack` of every row of packed rows ``flats`` (G, P) at once: each field as one
    contiguous (G, *shape) array (scalars (G,))."""
    return {
        name: np.ascontiguousarray(flats[:, at]).reshape(flats.shape[0], *shape)
        for name, shape, at in _spans(fields)
    }


# The per-block kernel ------------------------------------------------------------------------


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products (t,) of two float64 (t, d) arrays."""
    return np.einsum("ij,ij->i", a, b, optimize=True)


def _as_float(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``block`` in ``dtype``. float16 goes through torch, whose conversion uses the CPU's
    half-precision instructions: 0.14 ms for 2048 x 384 values against numpy's 1.5 ms, which
    was the largest cost of a float32 step after the products. Exact either way."""
    if block.dtype == np.float16 and dtype in (np.float32, np.float64):
        half = torch.from_numpy(np.ascontiguousarray(block))
        return half.to(torch.float32).numpy().astype(dtype, copy=False)
    return block.astype(dtype)  # always a copy, which the caller shifts in place


@dataclass(frozen=True)
class _Rows:
    """One representation's rows in one step: shifted (t, d) in the multiply dtype, the
    shift (d,) in that dtype, and squared norms (t,) of the shifted and the raw rows in
    float64. The raw rows are not kept (raw = x + shift)."""

    x: np.ndarray
    shift: np.ndarray
    sq: np.ndarray
    raw_sq: np.ndarray

    @property
    def sq_weights(self) -> np.ndarray:
        """The squared norms (t,) in the multiply dtype, as weights of the rows."""
        return self.sq.astype(self.x.dtype, copy=False)


def _rows(block: np.ndarray, shift: np.ndarray, dtype: np.dtype) -> _Rows:
    shift = shift.astype(dtype)
    x = _as_float(block, dtype)
    x -= shift
    sq = _rowdot(x, x).astype(np.float64, copy=False)
    shift64 = shift.astype(np.float64)
    raw_sq = np.maximum(sq + 2.0 * (x @ shift) + float(shift64 @ shift64), 0.0)
    return _Rows(x, shift, sq, raw_sq)


def block_moments(
    blocks: list[np.ndarray],
    shifts: Sequence[np.ndarray],
    self_reps: list[int],
    pairs: list[tuple[int, int]],
    rows_per_step: int = ROWS_PER_STEP,
    multiply: np.dtype | type = MULTIPLY_DTYPE,
) -> tuple[list[dict], list[dict]]:
    """Partial moments of one token block.

    ``blocks`` are the representations' rows of the block, each (t, d_r) of any float dtype
    (already restricted to the selected tokens); ``shifts`` the fixed shifts, each (d_r,). Returns
    the partial :class:`SelfMoments` fields for ``self_reps`` and :class:`CrossMoments`
    fields for ``pairs`` (indices into ``blocks``), as dicts, summed over the block's rows.

    ``multiply`` is the dtype of each step's arithmetic (at most ``rows_per_step`` rows):
    the d×d products XᵀX and XᵀY, the per-token norms and cosines and the weighted row sums.
    Each step's results are added to float64 sums. float32 runs the products at about twice
    float64's BLAS speed and skips a float64 copy of every row; it keeps the products within
    ~1e-7 of float64, and CKA, cosine and SVCCA within 1e-6 (the per-token terms enter
    debiased CKA with weight O(1/n)); but the whitening in PWCCA and the near-zero
    Procrustes distances of nearly unchanged layers amplify that rounding (on the bundled
    model's store, whose covariances have condition numbers near 5e8, PWCCA moved by up to
    6e-4 and a Procrustes distance of 4e-6 by 1%). So float64, exact to rounding, is the
    default. Shifts are used as rounded to ``multiply``.
    """
    dtype = np.dtype(multiply)
    selves = [_zero_self(blocks[r].shape[1]) for r in self_reps]
    crosses = [_zero_cross(blocks[a].shape[1], blocks[b].shape[1]) for a, b in pairs]
    n_rows = blocks[0].shape[0] if blocks else 0
    used = sorted({*self_reps, *(i for p in pairs for i in p)})
    for start in range(0, n_rows, rows_per_step):
        rows = {r: _rows(blocks[r][start : start + rows_per_step], shifts[r], dtype) for r in used}
        for acc, r in zip(selves, self_reps, strict=True):
            _add_self(acc, rows[r])
        for acc, (a, b) in zip(crosses, pairs, strict=True):
            _add_cross(acc, rows[a], rows[b])
    return selves, crosses


def _add_self(acc: dict, x: _Rows) -> None:
    acc["n"] += x.x.shape[0]
    acc["total"] += x.x.sum(axis=0, dtype=np.float64)
    acc["gram"] += x.x.T @ x.x
    acc["sq_norm_sum"] += x.sq.sum()
    acc["sq_norm_sq_sum"] += x.sq @ x.sq
    acc["sq_norm_weighted"] += x.sq_weights @ x.x
    acc["raw_norm_sum"] += np.sqrt(x.raw_sq).sum()


def _add_cross(acc: dict, x: _Rows, y: _Rows) -> None:
    acc["n"] += x.x.shape[0]
    acc["cross"] += x.x.T @ y.x
    acc["cos_sum"] += _cosine_sum(x, y)
    acc["sq_norm_product_sum"] += x.sq @ y.sq
    acc["y_weighted"] += x.sq_weights @ y.x
    acc["x_weighted"] += y.sq_weights @ x.x


def _cosine_sum(x: _Rows, y: _Rows) -> float:
    """Σ_i cos(raw x_i, raw y_i) from the shifted rows; NaN when the widths differ."""
    if x.x.shape[1] != y.x.shape[1]:
        return float("nan")
    shifts = float(x.shift.astype(np.float64) @ y.shift.astype(np.float64))
    raw_dot = (_rowdot(x.x, y.x) + x.x @ y.shift + y.x @ x.shift).astype(np.float64) + shifts
    denom = np.sqrt(x.raw_sq * y.raw_sq)
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
    multiply: np.dtype | type = np.float64,
) -> tuple[SelfMoments, SelfMoments, CrossMoments]:
    """In-memory moments of X (n, d1) and Y (n, d2): the reference the Dask pass must match.

    ``multiply`` as in :func:`block_moments`; the default float64 is the exact reference.
    """
    dtype = np.dtype(multiply)
    shifts = [
        np.zeros(a.shape[1]) if s is None else np.asarray(s, dtype).astype(np.float64)
        for a, s in ((x, shift_x), (y, shift_y))
    ]
    selves, crosses = block_moments([x, y], shifts, [0, 1], [(0, 1)], multiply=dtype)
    sx = SelfMoments(shift=shifts[0], **selves[0])
    sy = SelfMoments(shift=shifts[1], **selves[1])
    return sx, sy, CrossMoments(**crosses[0])
