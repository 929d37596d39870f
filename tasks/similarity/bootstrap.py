"""Bootstrap intervals for the similarity metrics, from per-group moments of one pass.

The resampling unit is a *group of probe examples*: the selected examples, in probe order
(a seeded, shuffled sample, so consecutive examples are a random partition), are cut into
``n_groups`` groups of nearly equal size, and every token goes with its example. The moments
of each group come from the same streaming pass that computes the point estimates
(:func:`tasks.similarity.accumulate.group_moments`); they add up to the moments of all
tokens. A bootstrap resample draws ``n_groups`` groups with replacement (multinomial counts
``w_g``, seeded), its moments are Σ_g w_g·M_g, exactly the moments of the resampled tokens,
and every metric is recomputed from them.

The interval is the percentile interval (Efron & Tibshirani 1993, ch. 13: the 2.5% and
97.5% quantiles over the resamples, numpy's linear interpolation) shifted by the bootstrap
estimate of bias (ibid., ch. 10: mean over the resamples minus the estimate from all
groups), then clipped to the metric's range. The shift matters for linear CKA near 0: a
resample repeats whole groups, their tokens meet themselves more often than in the probe
set, and CKA is biased upwards under that duplication, so the plain percentile interval
of a small CKA can lie entirely above its own estimate (0.028 with 0.029–0.044 on the
study preset). Shifted, the interval keeps the resamples' spread and is centred where the
estimate is. Resampling whole examples keeps the tokens of a sentence,
which are not independent, together; grouping examples keeps memory at n_groups moment
sets, independent of the number of examples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from layerdrift.tasks.similarity.accumulate import Pair, PassPlan, Rep, pass_slices
from layerdrift.tasks.similarity.metrics import METRICS, all_metrics
from layerdrift.tasks.similarity.moments import (
    CrossMoments,
    SelfMoments,
    cross_fields,
    self_fields,
    unpack_columns,
)
from layerdrift.tasks.similarity.tables import parallel_map

LEVEL = 0.95
# Where each metric can lie: shifted intervals are clipped to it. Debiased CKA can go
# below 0, norm_ratio is any relative change above -1, procrustes a distance in [0, 2].
METRIC_RANGE = {
    "cosine": (-1.0, 1.0),
    "linear_cka": (0.0, 1.0),
    "debiased_cka": (-np.inf, 1.0),
    "svcca": (0.0, 1.0),
    "pwcca": (0.0, 1.0),
    "procrustes": (0.0, 2.0),
    "norm_ratio": (-1.0, np.inf),
}
GroupMoments = tuple[dict[Rep, SelfMoments], dict[Pair, CrossMoments]]


def example_groups(example_of_token: np.ndarray, mask: np.ndarray, n_groups: int) -> np.ndarray:
    """The group (token,) int of every selected token, -1 for the others.

    The examples with a selected token, in probe order, are split into ``n_groups``
    consecutive groups of nearly equal size (fewer when there are fewer examples).
    """
    example = np.asarray(example_of_token, dtype=np.int64)
    chosen = np.unique(example[mask])
    rank = np.full(int(example.max()) + 1 if example.size else 0, -1, dtype=np.int64)
    rank[chosen] = np.arange(chosen.size)
    groups = min(n_groups, chosen.size)
    group_of_example = np.where(rank >= 0, rank * groups // max(chosen.size, 1), -1)
    return np.where(mask, group_of_example[example], -1)


def resample_counts(n_resamples: int, n_groups: int, seed: int) -> np.ndarray:
    """Seeded bootstrap resamples: counts (n_resamples, n_groups) of each group, each row
    summing to ``n_groups`` (a draw of n_groups groups with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)


@dataclass(frozen=True)
class _Stack:
    """One representation's or pair's moments of every group, field by field (G, ...)."""

    kind: type
    fields: dict[str, np.ndarray]
    shift: np.ndarray | None

    @classmethod
    def of(cls, parts: Sequence[SelfMoments | CrossMoments]) -> _Stack:
        names = [f.name for f in fields(parts[0]) if f.name not in ("shift", "_derived")]
        stacked = {name: np.stack([np.asarray(getattr(p, name)) for p in parts]) for name in names}
        return cls(type(parts[0]), stacked, getattr(parts[0], "shift", None))

    def at(self, weights: np.ndarray) -> SelfMoments | CrossMoments:
        """Σ_g weights[g]·moments of group g."""
        values: dict[str, object] = {}
        for name, stack in self.fields.items():
            total = np.tensordot(weights.astype(np.float64), stack, axes=1)
            values[name] = float(total) if total.ndim == 0 else total
        if self.shift is not None:
            values["shift"] = self.shift
        return self.kind(**values)


@dataclass(frozen=True)
class MomentStack:
    """Every group's moments of some representations and pairs, stacked field by field.

    ``selves`` and ``crosses`` map each representation and pair to its fields over the
    groups (G, ...). Built once per layer and shared by the point estimate and every
    resample (stacking the groups took about as long as the metrics of two resamples).
    A resample's moments are Σ_g w_g·M_g, one ``tensordot`` per field: a single
    matrix-vector product over all fields at once changed the scalars' sums in the last
    bit (BLAS sums a vector and a matrix column in different orders), so the per-field
    products stay and the intervals stay bit-identical.
    """

    selves: dict[Rep, _Stack]
    crosses: dict[Pair, _Stack]

    @classmethod
    def of(cls, per_group: Sequence[GroupMoments]) -> MomentStack:
        """Stack a list over groups of (self moments, cross moments), as the pass returns."""
        selves = {r: _Stack.of([g[0][r] for g in per_group]) for r in per_group[0][0]}
        crosses = {p: _Stack.of([g[1][p] for g in per_group]) for p in per_group[0][1]}
        return cls(selves, crosses)

    @classmethod
    def of_pass(
        cls, flats: np.ndarray, plan: PassPlan, shifts: dict[Rep, np.ndarray], hidden: int
    ) -> MomentStack:
        """Stack the packed (G, P) rows of :func:`tasks.similarity.accumulate.group_moment_flats`
        without unpacking each group first."""
        s_fields, c_fields = self_fields(hidden), cross_fields(hidden, hidden)
        self_at, cross_at = pass_slices(plan, hidden)
        selves = {
            r: _Stack(SelfMoments, unpack_columns(flats[:, at], s_fields), shifts[r])
            for r, at in self_at.items()
        }
        crosses = {
            p: _Stack(CrossMoments, unpack_columns(flats[:, at], c_fields), None)
            for p, at in cross_at.items()
        }
        return cls(selves, crosses)

    @property
    def n_groups(self) -> int:
        """G, the number of groups."""
        first = next(iter(self.selves.values()))
        return next(iter(first.fields.values())).shape[0]

    def at(self, weights: np.ndarray) -> GroupMoments:
        """Σ_g weights[g]·moments of group g, for ``weights`` (G,)."""
        return (
            {r: s.at(weights) for r, s in self.selves.items()},
            {p: c.at(weights) for p, c in self.crosses.items()},
        )


def total_moments(per_group: Sequence[GroupMoments] | MomentStack) -> GroupMoments:
    """The moments of all groups together (what an ungrouped pass returns)."""
    stack = _as_stack(per_group)
    return stack.at(np.ones(stack.n_groups))


def _as_stack(per_group: Sequence[GroupMoments] | MomentStack) -> MomentStack:
    return per_group if isinstance(per_group, MomentStack) else MomentStack.of(per_group)


def shifted_percentile_interval(
    values: np.ndarray, estimate: np.ndarray, low_high: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """The 95% interval (2, ...) = (low, high): percentiles of ``values`` (R, ...) shifted
    by the bootstrap bias (mean of ``values`` minus ``estimate`` (...)) and clipped to
    ``low_high``, the metric's range, broadcast against ``estimate``.

    NaN resamples are left out; a metric NaN in every resample stays NaN.
    """
    tail = 100.0 * (1.0 - LEVEL) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN metrics stay NaN
        low, high = np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
        bias = np.nanmean(values, axis=0) - estimate
    floor, ceiling = low_high
    return np.stack([np.clip(low - bias, floor, ceiling), np.clip(high - bias, floor, ceiling)])


def bootstrap_intervals(
    per_group: Sequence[GroupMoments] | MomentStack,
    pairs: Sequence[Pair],
    counts: np.ndarray,
    estimate: dict[Pair, np.ndarray] | None = None,
) -> dict[Pair, np.ndarray]:
    """Bias-shifted percentile intervals (2, len(METRICS)) = (low, high) of every pair's
    metrics (module docstring).

    ``per_group`` holds each group's moments (from
    :func:`tasks.similarity.accumulate.group_moments`, or packed as a :class:`MomentStack`);
    ``counts`` (R, G) the resamples (:func:`resample_counts`). ``estimate`` maps each pair
    to its metrics (len(METRICS),) from all groups, when the caller has them already (they
    are the same computation on the same moments); else they are computed here. A pair
    ``(a, a)`` does not vary and gets NaN (the caller gives it its value); a metric NaN in
    some resamples uses the others. Resamples run on every core.
    """
    stack = _as_stack(per_group)
    distinct = [p for p in pairs if p[0] != p[1]]

    def one(weights: np.ndarray, resample: bool = True) -> np.ndarray:
        selves, crosses = stack.at(weights)
        return np.stack(
            [all_metrics(selves[a], selves[b], crosses[(a, b)], resample) for a, b in distinct]
        )

    out = {pair: np.full((2, len(METRICS)), np.nan) for pair in pairs}
    if not distinct:
        return out
    values = np.stack(parallel_map(one, list(counts)))  # (R, pairs, metrics)
    if estimate is None:
        point = one(np.ones(counts.shape[1]), resample=False)  # every group once: the estimate
    else:
        point = np.stack([estimate[pair] for pair in distinct])
    metric_range = (
        np.array([METRIC_RANGE[m][0] for m in METRICS]),
        np.array([METRIC_RANGE[m][1] for m in METRICS]),
    )
    interval = shifted_percentile_interval(values, point, metric_range)  # (2, pairs, M)
    out.update({pair: interval[:, i] for i, pair in enumerate(distinct)})
    return out
