"""The Dask pass: one fused blockwise over token blocks, partial moments per block, tree sum.

Representations are addressed as ``(checkpoint index, layer index)`` into the store's
``activations`` (checkpoint, layer, token, hidden). A pass reads every token block of each
representation it touches once, runs :func:`tasks.similarity.moments.block_moments` on the
block, packs the partial moments into one float64 vector, and sums those vectors with
``split_every``-ary tree reduction. Peak memory is a few token blocks plus a few packed
vectors (O(pairs · hidden²)), independent of the number of tokens; when many pairs would
make one vector too large, :func:`plan_passes` splits them into several passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from layerdrift.tasks.similarity.moments import (
    MULTIPLY_DTYPE,
    CrossMoments,
    SelfMoments,
    block_moments,
    cross_fields,
    field_size,
    pack,
    self_fields,
    unpack,
)

logger = logging.getLogger(__name__)

Rep = tuple[int, int]  # (checkpoint index, layer index)
Pair = tuple[Rep, Rep]
DEFAULT_PASS_BYTES = 64 * 2**20  # packed partial moments per token block and pass


@dataclass(frozen=True)
class PassPlan:
    """One Dask pass: the representations it reads, whose self moments it sums, its pairs."""

    reps: tuple[Rep, ...]
    self_reps: tuple[Rep, ...]
    pairs: tuple[Pair, ...]

    def packed_size(self, hidden: int) -> int:
        """Float64 values in one block's packed partial moments."""
        return len(self.self_reps) * field_size(self_fields(hidden)) + len(self.pairs) * field_size(
            cross_fields(hidden, hidden)
        )


def token_mask(
    ds: xr.Dataset, exclude_special: bool = False, examples: Sequence[int] | None = None
) -> np.ndarray:
    """Which tokens the statistics use: bool (token,).

    ``exclude_special`` drops tokens flagged ``is_special``; ``examples`` keeps only the tokens
    of those example indices. Raises ValueError when an example does not exist or nothing is
    left.
    """
    mask = np.ones(ds.sizes["token"], dtype=bool)
    if exclude_special:
        mask &= ~np.asarray(ds["is_special"].values, dtype=bool)
    if examples is not None:
        wanted = np.asarray(list(examples), dtype=np.int64)
        n_examples = ds.sizes["example"]
        bad = wanted[(wanted < 0) | (wanted >= n_examples)]
        if bad.size:
            raise ValueError(
                f"similarity.examples {bad.tolist()} are not probe examples "
                f"(the store has examples 0..{n_examples - 1}): fix the config"
            )
        mask &= np.isin(np.asarray(ds["example_of_token"].values), wanted)
    if not mask.any():
        raise ValueError(
            "no tokens left after exclude_special/examples: select examples with real tokens"
        )
    return mask


def plan_passes(
    pairs: Sequence[Pair],
    hidden: int,
    budget_bytes: int = DEFAULT_PASS_BYTES,
    known: Iterable[Rep] = (),
) -> list[PassPlan]:
    """Split ``pairs`` (in order) into passes whose packed partial moments fit the budget.

    A pair ``(a, a)`` only asks for the self moments of ``a``. Each representation's self
    moments are summed in the first pass that reads it, unless it is ``known`` (summed
    before). Consecutive pairs sharing representations end up in the same pass, so order
    pairs by locality.
    """
    budget = max(budget_bytes // 8, 1)
    self_size = field_size(self_fields(hidden))
    cross_size = field_size(cross_fields(hidden, hidden))
    plans: list[PassPlan] = []
    done: set[Rep] = set(known)
    reps: list[Rep] = []
    selves: list[Rep] = []
    cross: list[Pair] = []
    size = 0
    for a, b in dict.fromkeys(pairs):
        new_selves = [r for r in dict.fromkeys((a, b)) if r not in done]
        cost = len(new_selves) * self_size + (cross_size if a != b else 0)
        if cross or selves:
            if size + cost > budget:
                plans.append(PassPlan(tuple(reps), tuple(selves), tuple(cross)))
                reps, selves, cross, size = [], [], [], 0
        for r in (a, b):
            if r not in reps:
                reps.append(r)
        selves += new_selves
        done.update(new_selves)
        if a != b:
            cross.append((a, b))
        size += cost
    if selves or cross:
        plans.append(PassPlan(tuple(reps), tuple(selves), tuple(cross)))
    return plans


def _pass_kernel(
    *arrays: np.ndarray,
    shifts: list[np.ndarray],
    self_idx: list[int],
    pair_idx: list[tuple[int, int]],
    hidden: int,
    multiply: np.dtype,
) -> np.ndarray:
    """Blockwise kernel: rep blocks (t, hidden) ..., then the mask block (t,) → (1, P)."""
    *blocks, mask = arrays
    if not mask.all():
        blocks = [b[mask] for b in blocks]
    selves, crosses = block_moments(blocks, shifts, self_idx, pair_idx, multiply=multiply)
    s_fields, c_fields = self_fields(hidden), cross_fields(hidden, hidden)
    parts = [pack(s, s_fields) for s in selves] + [pack(c, c_fields) for c in crosses]
    return np.concatenate(parts)[None, :] if parts else np.zeros((1, 0))


def selected_blocks(mask: np.ndarray, chunks: Sequence[int]) -> list[int]:
    """Token blocks holding at least one selected token."""
    bounds = np.cumsum([0, *chunks])
    return [i for i in range(len(chunks)) if mask[bounds[i] : bounds[i + 1]].any()]


def compute_shifts(
    acts: da.Array,
    reps: Sequence[Rep],
    mask: np.ndarray,
    scheduler: Any = None,
    multiply: np.dtype | type = MULTIPLY_DTYPE,
) -> dict[Rep, np.ndarray]:
    """Per representation, the mean (hidden,) of its first block's selected tokens, rounded
    to the ``multiply`` dtype (the shift the kernel subtracts), as float64."""
    chunks = acts.chunks[2]
    first = selected_blocks(mask, chunks)[0]
    start = int(np.sum(chunks[:first]))
    stop = start + chunks[first]
    keep = mask[start:stop]
    slices = [acts[c, layer, start:stop] for c, layer in reps]
    (values,) = dask.compute(slices, scheduler=scheduler)
    return {
        rep: np.asarray(v, dtype=np.float64)[keep].mean(axis=0).astype(multiply).astype(np.float64)
        for rep, v in zip(reps, values, strict=True)
    }


def _pass_total(
    acts: da.Array,
    plan: PassPlan,
    mask: np.ndarray,
    shifts: dict[Rep, np.ndarray],
    split_every: int,
    multiply: np.dtype,
) -> da.Array:
    """The lazy packed moments (P,) of ``plan`` over the tokens selected by ``mask``.

    ``acts`` is rechunked to (1, 1, token chunk, hidden); only token blocks holding a
    selected token are read.
    """
    hidden = acts.shape[3]
    blocks = selected_blocks(mask, acts.chunks[2])
    index = {rep: i for i, rep in enumerate(plan.reps)}
    rep_arrays = [acts[c, layer].blocks[blocks] for c, layer in plan.reps]
    mask_da = da.from_array(mask, chunks=(acts.chunks[2],)).blocks[blocks]
    args: list[Any] = []
    for arr in rep_arrays:
        args += [arr, "th"]
    args += [mask_da, "t"]
    partials = da.blockwise(
        _pass_kernel,
        "tp",
        *args,
        new_axes={"p": plan.packed_size(hidden)},
        adjust_chunks={"t": 1},
        dtype=np.float64,
        concatenate=True,
        meta=np.empty((0, 0), dtype=np.float64),
        shifts=[shifts[r] for r in plan.reps],
        self_idx=[index[r] for r in plan.self_reps],
        pair_idx=[(index[a], index[b]) for a, b in plan.pairs],
        hidden=hidden,
        multiply=np.dtype(multiply),
    )
    return partials.sum(axis=0, split_every=split_every)


def run_pass(
    acts: da.Array,
    plan: PassPlan,
    mask: np.ndarray,
    shifts: dict[Rep, np.ndarray],
    scheduler: Any = None,
    split_every: int = 4,
    multiply: np.dtype | type = MULTIPLY_DTYPE,
) -> tuple[dict[Rep, SelfMoments], dict[Pair, CrossMoments]]:
    """Run one pass over ``acts`` (checkpoint, layer, token, hidden) and unpack its moments."""
    acts = acts.rechunk({0: 1, 1: 1, 3: -1})
    total = _pass_total(acts, plan, mask, shifts, split_every, multiply)
    # Dask runs blocks in parallel; multi-threaded BLAS inside each block oversubscribes
    # the cores (measured 2-2.5x slower on 2 cores). Distributed workers already use 1.
    with threadpool_limits(limits=1, user_api="blas"):
        (flat,) = dask.compute(total, scheduler=scheduler)
    return _unpack_pass(np.asarray(flat), plan, shifts, acts.shape[3])


def run_group_flats(
    acts: da.Array,
    plan: PassPlan,
    groups: np.ndarray,
    n_groups: int,
    shifts: dict[Rep, np.ndarray],
    scheduler: Any = None,
    split_every: int = 4,
    multiply: np.dtype | type = MULTIPLY_DTYPE,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One pass that sums the moments of each token group apart: each group's packed
    moments, (G, P) float64, row g laid out as :func:`pass_slices` says.

    ``groups`` (token,) int gives each selected token its group 0..n_groups-1 and -1 to
    the others. Every group's sum is one Dask graph over the blocks it touches; the graphs
    share their reads, so one compute reads each block once. A group without tokens gets
    zero moments. ``out``, a (G, P) float64 array, receives the rows when given and of that
    shape (see :func:`group_moment_flats`).
    """
    acts = acts.rechunk({0: 1, 1: 1, 3: -1})
    size = plan.packed_size(acts.shape[3])
    totals = []
    for g in range(n_groups):
        mask = groups == g
        if mask.any():
            totals.append(_pass_total(acts, plan, mask, shifts, split_every, multiply))
        else:
            totals.append(da.zeros(size))
    with threadpool_limits(limits=1, user_api="blas"):
        (flats,) = dask.compute(totals, scheduler=scheduler)
    if out is None or out.shape != (n_groups, size) or out.dtype != np.float64:
        out = None
    return np.stack([np.asarray(flat) for flat in flats], out=out)


def pass_slices(plan: PassPlan, hidden: int) -> tuple[dict[Rep, slice], dict[Pair, slice]]:
    """Where each representation's self moments and each pair's cross moments lie in a
    packed pass vector of width ``hidden``: ``plan``'s self moments in order, then its pairs."""
    s_size = field_size(self_fields(hidden))
    c_size = field_size(cross_fields(hidden, hidden))
    selves = {rep: slice(i * s_size, (i + 1) * s_size) for i, rep in enumerate(plan.self_reps)}
    start = len(plan.self_reps) * s_size
    crosses = {
        pair: slice(start + i * c_size, start + (i + 1) * c_size)
        for i, pair in enumerate(plan.pairs)
    }
    return selves, crosses


def _unpack_pass(
    flat: np.ndarray, plan: PassPlan, shifts: dict[Rep, np.ndarray], hidden: int
) -> tuple[dict[Rep, SelfMoments], dict[Pair, CrossMoments]]:
    s_fields, c_fields = self_fields(hidden), cross_fields(hidden, hidden)
    self_at, cross_at = pass_slices(plan, hidden)
    selves = {
        rep: SelfMoments(shift=shifts[rep], **unpack(flat[at], s_fields))
        for rep, at in self_at.items()
    }
    crosses = {pair: CrossMoments(**unpack(flat[at], c_fields)) for pair, at in cross_at.items()}
    return selves, crosses


def iter_moments(
    acts: da.Array,
    pairs: Sequence[Pair],
    mask: np.ndarray,
    scheduler: Any = None,
    budget_bytes: int = DEFAULT_PASS_BYTES,
    split_every: int = 4,
    known: dict[Rep, SelfMoments] | None = None,
    multiply: np.dtype | type = MULTIPLY_DTYPE,
) -> Iterator[tuple[dict[Rep, SelfMoments], dict[Pair, CrossMoments]]]:
    """Run the passes one by one; yield (self moments so far, this pass's cross moments).

    A caller that turns each pass's cross moments into metrics and drops them keeps only
    the self moments in memory. ``known`` self moments (of the same tokens, from an earlier
    pass) are not summed again; their shifts are reused so that the new cross moments
    match them. Other arguments as for :func:`accumulate_moments`.
    """
    if mask.shape != (acts.shape[2],):
        raise ValueError(f"mask has shape {mask.shape}, the store has {acts.shape[2]} tokens")
    known = dict(known or {})
    plans = plan_passes(pairs, acts.shape[3], budget_bytes, known)
    reps = list(dict.fromkeys(r for p in plans for r in p.reps))
    new = [r for r in reps if r not in known]
    shifts = {r: s.shift for r, s in known.items()}
    shifts.update(compute_shifts(acts, new, mask, scheduler, multiply) if new else {})
    selves: dict[Rep, SelfMoments] = known
    for i, plan in enumerate(tqdm(plans, total=len(plans), desc="moments passes", leave=False)):
        logger.info(
            "moments pass %d/%d: %d representations, %d pairs",
            i + 1,
            len(plans),
            len(plan.reps),
            len(plan.pairs),
        )
        s, crosses = run_pass(acts, plan, mask, shifts, scheduler, split_every, multiply)
        selves.update(s)
        yield selves, crosses


def accumulate_moments(
    acts: da.Array,
    pairs: Sequence[Pair],
    mask: np.ndarray,
    scheduler: Any = None,
    budget_bytes: int = DEFAULT_PASS_BYTES,
    split_every: int = 4,
    multiply: np.dtype | type = MULTIPLY_DTYPE,
) -> tuple[dict[Rep, SelfMoments], dict[Pair, CrossMoments]]:
    """Moments of every representation in ``pairs`` and of every pair with distinct sides.

    ``acts`` is the store's dask array (checkpoint, layer, token, hidden); ``mask`` bool
    (token,) selects tokens. ``scheduler`` is anything ``dask.compute`` accepts (``None``
    for the current default, ``"threads"``, ``"synchronous"``, a distributed ``Client``).
    ``budget_bytes`` bounds one block's packed partial moments (see :func:`plan_passes`).
    ``multiply`` is the dtype of the d×d block products (see
    :func:`tasks.similarity.moments.block_moments`); sums are float64 either way.
    """
    selves: dict[Rep, SelfMoments] = {}
    crosses: dict[Pair, CrossMoments] = {}
    passes = iter_moments(
        acts, pairs, mask, scheduler, budget_bytes, split_every, multiply=multiply
    )
    for s, c in passes:
        selves, crosses = s, {**crosses, **c}
    return selves, crosses


def group_moments(
    acts: da.Array,
    pairs: Sequence[Pair],
    groups: np.ndarray,
    n_groups: int,
    scheduler: Any = None,
    split_every: int = 4,
    multiply: np.dtype | type = MULTIPLY_DTYPE,
) -> list[tuple[dict[Rep, SelfMoments], dict[Pair, CrossMoments]]]:
    """Moments of ``pairs`` summed per token group, in one pass: a list over the groups.

    ``groups`` (token,) int assigns each selected token a group 0..n_groups-1 (-1: not
    selected). Every representation's self moments and every pair's cross moments come per
    group, with one shift per representation, so they add up to the moments of all
    selected tokens. Memory holds n_groups packed moment vectors.
    """
    flats, plan, shifts = group_moment_flats(
        acts, pairs, groups, n_groups, scheduler, split_every, multiply
    )
    return [_unpack_pass(f, plan, shifts, acts.shape[3]) for f in flats]


def group_moment_flats(
    acts: da.Array,
    pairs: Sequence[Pair],
    groups: np.ndarray,
    n_groups: int,
    scheduler: Any = None,
    split_every: int = 4,
    multiply: np.dtype | type = MULTIPLY_DTYPE,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, PassPlan, dict[Rep, np.ndarray]]:
    """:func:`group_moments` still packed: the (G, P) float64 moments of every group (row g
    as :func:`pass_slices` lays it out), the pass's plan and the shifts (hidden,) per
    representation. The bootstrap weights the rows without unpacking every group.

    ``out``: the previous layer's rows, written over when the shape is the same. The rows
    are hundreds of MB (20 groups × 10 moment sets of 384 × 384 on the quick run: 240 MB),
    and on these machines touching that much fresh memory took 0.5 s a layer, the copy
    into memory already touched 0.02 s."""
    if groups.shape != (acts.shape[2],):
        raise ValueError(f"groups has shape {groups.shape}, the store has {acts.shape[2]} tokens")
    reps = list(dict.fromkeys(r for p in pairs for r in p))
    plan = PassPlan(
        tuple(reps), tuple(reps), tuple(p for p in dict.fromkeys(pairs) if p[0] != p[1])
    )
    shifts = compute_shifts(acts, reps, groups >= 0, scheduler, multiply)
    logger.info(
        "grouped moments pass: %d representations, %d pairs, %d groups",
        len(plan.reps),
        len(plan.pairs),
        n_groups,
    )
    flats = run_group_flats(
        acts, plan, groups, n_groups, shifts, scheduler, split_every, multiply, out
    )
    return flats, plan, shifts
