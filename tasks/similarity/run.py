"""The similarity stage for one run: moments → metrics, drift, probes → results.zarr + CSV.

Writes to ``<run>/results.zarr`` the groups ``drift``, ``layer_similarity``,
``similarity_ci`` (95% bootstrap intervals, when ``similarity.bootstrap_resamples`` > 0; see
:mod:`tasks.similarity.bootstrap`), ``probe_accuracy``, ``probe_control_accuracy`` and
``majority_rate`` (when ``similarity.probes``) and, last, ``similarity``, whose attributes
record the store generation and the groups written; then ``<run>/similarity.csv``.

With ``similarity.random_floor`` the random reference's store (``<run>/random.zarr``, written
by the extract stage: the probe set through a seeded random copy of the model) joins the
passes as one more checkpoint index, and ``similarity`` and ``similarity_ci`` gain the
reference ``random``: each checkpoint against that untrained copy, layer by layer.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import dask
import dask.array as da
import numpy as np
from prefect import task
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from layerdrift.config import RunConfig
from layerdrift.storage import RunDir, list_results, open_result, write_result
from layerdrift.storage.activations import open_store, read_attrs
from layerdrift.storage.rundir import SIMILARITY_CSV as CSV_FILE
from layerdrift.tasks.data.probe import UNLABELLED_NOTE, is_labelled
from layerdrift.tasks.retry import retry_unless_bad_input
from layerdrift.tasks.similarity.accumulate import group_moment_flats, iter_moments, token_mask
from layerdrift.tasks.similarity.bootstrap import (
    LEVEL,
    MomentStack,
    bootstrap_intervals,
    example_groups,
    resample_counts,
    total_moments,
)
from layerdrift.tasks.similarity.drift import drift_array
from layerdrift.tasks.similarity.probes import probe_results
from layerdrift.tasks.similarity.tables import (
    RANDOM,
    checkpoint_pairs,
    cross_interval_table,
    cross_pairs,
    cross_similarity_table,
    layer_pairs,
    layer_similarity_table,
    pair_metrics,
    references,
    self_metrics,
    similarity_interval_table,
    similarity_table,
)
from layerdrift.tasks.study.series import (
    FinalPair,
    compared_pairs,
    previous_indices,
    task_coordinates,
)

logger = logging.getLogger(__name__)

PROBE_GROUPS = ("probe_accuracy", "probe_control_accuracy", "majority_rate")
BASE, FINAL = "base", "final"


def _selection_attrs(cfg: RunConfig, n_tokens: int, generation: str | None) -> dict[str, Any]:
    examples = cfg.similarity.examples
    return {
        "exclude_special": bool(cfg.similarity.exclude_special),
        "examples": "all" if examples is None else [int(e) for e in examples],
        "n_tokens_used": int(n_tokens),
        "store_generation": generation or "",
    }


def _scheduler(client: Any) -> contextlib.AbstractContextManager:
    return dask.config.set(scheduler=client) if client is not None else contextlib.nullcontext()


def compute_similarity(run: RunDir, cfg: RunConfig, client: Any = None) -> dict[str, Any]:
    """Compute and write every similarity output of ``run``; return a small summary.

    ``client`` is a ``distributed.Client`` (or any Dask scheduler); ``None`` uses the
    current default (threads). The summary holds, per layer, final-vs-base cosine, linear
    and debiased CKA, and the final checkpoint's mean-pooled probe accuracy.
    """
    # Dask parallelises over blocks; multi-threaded BLAS/LAPACK on top oversubscribes the
    # cores: eigh of 384x384 took 6.1 s with BLAS threads vs 0.22 s with one (busy machine).
    with threadpool_limits(limits=1, user_api="blas"):
        return _compute_similarity(run, cfg, client)


def _compute_similarity(run: RunDir, cfg: RunConfig, client: Any) -> dict[str, Any]:
    ds = open_store(run.activations())
    generation = (read_attrs(run.activations()) or {}).get("generation")
    checkpoints = [str(c) for c in ds["checkpoint"].values]
    if BASE not in checkpoints or checkpoints[0] != BASE:
        raise ValueError(
            f"the activation store's first checkpoint must be {BASE!r}, got {checkpoints}: "
            "re-run the extract stage"
        )
    final = FINAL if FINAL in checkpoints else checkpoints[-1]
    chosen = list(dict.fromkeys([0, checkpoints.index(final)]))
    layers = np.asarray(ds["layer"].values)
    mask = token_mask(ds, cfg.similarity.exclude_special, cfg.similarity.examples)
    attrs = _selection_attrs(cfg, int(mask.sum()), generation)
    acts, random = ds["activations"].data, None
    if cfg.similarity.random_floor:
        acts, random, attrs["random_generation"] = with_random_reference(run, ds)
    previous = previous_indices(checkpoints)
    finals = compared_pairs(cfg, checkpoints)
    crossed = [(checkpoints.index(p.first), checkpoints.index(p.second)) for p in finals]
    results = run.results()
    with _scheduler(client):
        values, intervals, known = _checkpoint_metrics(
            ds, acts, random, mask, cfg, previous, crossed
        )
        known = {rep: moments for rep, moments in known.items() if rep[0] != random}
        values.update(_layer_metrics(ds, mask, chosen, known))
        drift = drift_array(ds, BASE).assign_attrs(
            {"store_generation": attrs["store_generation"], "tokens": "every store token"}
        )
        write_result(results, "drift", drift)
        groups = ["drift", "layer_similarity"]
        table = layer_similarity_table(checkpoints, chosen, layers, values)
        write_result(results, "layer_similarity", table.assign_attrs(attrs))
        ci_attrs = {**attrs, **_bootstrap_attrs(cfg)}
        if intervals is not None:
            ci = similarity_interval_table(
                checkpoints, layers, values, intervals, ci_attrs, random, previous
            )
            write_result(results, "similarity_ci", ci)
            groups.append("similarity_ci")
        if finals:
            groups += _write_cross(results, finals, crossed, layers, values, intervals, attrs,
                                   ci_attrs)  # fmt: skip
        probes = None
        if cfg.similarity.probes and is_labelled(ds["label"].values):
            probes = _write_probes(ds, cfg, results, attrs)
            groups += list(PROBE_GROUPS)
        elif cfg.similarity.probes:
            attrs = {**attrs, "probes_skipped": UNLABELLED_NOTE}
            logger.info("probes skipped: %s", UNLABELLED_NOTE)
    sim = similarity_table(checkpoints, layers, values, random, previous)
    if cfg.tasks:  # select by task: sim.sel(checkpoint=sim.task == "topic")
        coords = task_coordinates(cfg, checkpoints)
        sim = sim.assign_coords({name: ("checkpoint", values) for name, values in coords.items()})
    sim = sim.assign_attrs(
        {**attrs, "groups": [*groups, "similarity"], "base": BASE, "references": references(random)}
    )
    write_result(results, "similarity", sim)
    frame = sim.to_series().rename("value").reset_index()
    run.write_text(frame.to_csv(index=False), CSV_FILE)
    return _summary(sim, probes, final, results)


def with_random_reference(run: RunDir, ds) -> tuple[da.Array, int, str]:
    """The store's activations with the random reference's appended along the checkpoint
    axis: (checkpoints + 1, layer, token, hidden), the random one last; its index; and the
    random store's generation. Refuses a random store of other tokens."""
    url = run.random_activations()
    random_attrs = read_attrs(url)
    if random_attrs is None:
        raise ValueError(
            f"similarity.random_floor is set but {url} does not exist: run the extract stage "
            "(it writes the random reference), or set similarity.random_floor = false"
        )
    floor = open_store(url)
    if floor.sizes["token"] != ds.sizes["token"] or not np.array_equal(
        floor["token_id"].values, ds["token_id"].values
    ):
        raise ValueError(
            f"{url} holds other tokens than {run.activations()}: delete it and run the "
            "extract stage again"
        )
    acts = da.concatenate([ds["activations"].data, floor["activations"].data], axis=0)
    return acts, ds.sizes["checkpoint"], str(random_attrs.get("generation", ""))


def _checkpoint_metrics(
    ds,
    acts: da.Array,
    random: int | None,
    mask: np.ndarray,
    cfg: RunConfig,
    previous: list[int | None],
    crossed: list[tuple[int, int]],
) -> tuple[dict, dict | None, dict]:
    """Metrics (and bootstrap intervals) of the ``similarity`` table's pairs and of the
    ``crossed`` checkpoint pairs (every two task finals), and the self moments of every
    representation: one grouped pass per layer when intervals are asked for (the groups'
    moments add up to the point estimates), else ordinary passes. ``acts`` holds the store's
    checkpoints and, at index ``random``, the random reference."""
    n_checkpoints, n_layers = ds.sizes["checkpoint"], acts.shape[1]
    values: dict = {}
    selves: dict = {}
    resamples = cfg.similarity.bootstrap_resamples

    def layer_pairs_of(layer: int) -> list:
        pairs = checkpoint_pairs(n_checkpoints, layer, random, previous)
        return list(dict.fromkeys(pairs + cross_pairs(crossed, layer)))

    if not resamples:
        pairs = [p for layer in range(n_layers) for p in layer_pairs_of(layer)]
        for selves, crosses in iter_moments(acts, pairs, mask):
            values.update(pair_metrics(selves, crosses))
        return values, None, dict(selves)
    groups = example_groups(ds["example_of_token"].values, mask, cfg.similarity.bootstrap_groups)
    n_groups = int(groups.max()) + 1
    counts = resample_counts(resamples, n_groups, cfg.seed)
    intervals: dict = {}
    flats = None  # each layer's rows go where the previous layer's were
    for layer in tqdm(range(n_layers), total=n_layers, desc="bootstrap", leave=False):
        pairs = layer_pairs_of(layer)
        flats, plan, shifts = group_moment_flats(acts, pairs, groups, n_groups, out=flats)
        stack = MomentStack.of_pass(flats, plan, shifts, acts.shape[3])
        s, crosses = total_moments(stack)
        selves.update(s)
        point = pair_metrics(s, crosses)
        values.update(point)
        # The point estimates are the bootstrap's centre: pass them rather than recompute.
        intervals.update(bootstrap_intervals(stack, pairs, counts, estimate=point))
    return values, intervals, selves


def _write_cross(
    results: str,
    finals: list[FinalPair],
    crossed: list[tuple[int, int]],
    layers: np.ndarray,
    values: dict,
    intervals: dict | None,
    attrs: dict,
    ci_attrs: dict,
) -> list[str]:
    """Write ``cross_similarity`` (and its intervals); returns the groups written."""
    keys = [[((a, li), (b, li)) for li in range(len(layers))] for a, b in crossed]
    table = cross_similarity_table(
        [p.name for p in finals],
        [p.first for p in finals],
        [p.second for p in finals],
        [p.kind for p in finals],
        layers,
        keys,
        values,
    )
    write_result(results, "cross_similarity", table.assign_attrs(attrs))
    if intervals is None:
        return ["cross_similarity"]
    ci = cross_interval_table(table, keys, intervals, ci_attrs)
    write_result(results, "cross_similarity_ci", ci)
    return ["cross_similarity", "cross_similarity_ci"]


def _layer_metrics(ds, mask: np.ndarray, chosen: list[int], known: dict) -> dict:
    """Metrics of layer pairs within the ``chosen`` checkpoints, both ways, and of every
    representation with itself; ``known`` self moments are reused."""
    n_layers = ds.sizes["layer"]
    pairs = [p for layer in range(n_layers) for p in layer_pairs(n_layers, layer, chosen)]
    values: dict = {}
    selves = known
    for selves, crosses in iter_moments(ds["activations"].data, pairs, mask, known=known):
        values.update(pair_metrics(selves, crosses, both_ways=True))
    values.update(self_metrics(selves))
    return values


def _bootstrap_attrs(cfg: RunConfig) -> dict[str, Any]:
    return {
        "level": LEVEL,
        "method": "bias-shifted percentile bootstrap over groups of probe examples",
        "resamples": cfg.similarity.bootstrap_resamples,
        "groups": cfg.similarity.bootstrap_groups,
        "seed": cfg.seed,
    }


def _write_probes(ds, cfg: RunConfig, results: str, attrs: dict) -> Any:
    """Fit the probes and their control; write each group; return ``probe_accuracy``."""
    out = probe_results(
        ds,
        cfg.similarity.probe_folds,
        cfg.seed,
        cfg.similarity.examples,
        ~ds["is_special"].values if cfg.similarity.exclude_special else None,
    )
    for name in PROBE_GROUPS:
        write_result(results, name, out[name].assign_attrs(attrs))
    return out["probe_accuracy"]


def _clean(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), 6) for v in values]


def _summary(sim, probes, final: str, results: str) -> dict[str, Any]:
    row = sim.sel(reference="base", checkpoint=final)
    summary: dict[str, Any] = {
        "results": results,
        "final": final,
        "layers": [int(v) for v in sim["layer"].values],
        "n_tokens_used": sim.attrs["n_tokens_used"],
    }
    for metric in ("cosine", "linear_cka", "debiased_cka"):
        summary[f"{metric}_final_vs_base"] = _clean(row.sel(metric=metric).values)
        if RANDOM in sim.reference:
            floor = sim.sel(reference=RANDOM, checkpoint=final, metric=metric).values
            summary[f"{metric}_final_vs_random"] = _clean(floor)
    if probes is not None:
        summary["probe_mean_final"] = _clean(probes.sel(checkpoint=final, pooling="mean").values)
    return summary


def similarity_complete(run: RunDir) -> bool:
    """Whether every group and the CSV were written, for the activation stores now on disk
    (the random reference's too, when the tables hold it)."""
    results = run.results()
    present = set(list_results(results))
    if "similarity" not in present or not run.exists(CSV_FILE):
        return False
    attrs = open_result(results, "similarity")["similarity"].attrs
    generation = (read_attrs(run.activations()) or {}).get("generation") or ""
    if "random_generation" in attrs:
        floor = (read_attrs(run.random_activations()) or {}).get("generation") or ""
        if attrs["random_generation"] != floor:
            return False
    return set(attrs.get("groups", [])) <= present and attrs.get("store_generation") == generation


@task(
    name="similarity", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_bad_input
)
def compute_similarity_task(run: RunDir, config: RunConfig) -> dict[str, Any]:
    """Prefect task: :func:`compute_similarity`, on ``config.dask_address`` when set."""
    if config.dask_address is None:
        return compute_similarity(run, config)
    from distributed import Client

    with Client(config.dask_address) as client:
        return compute_similarity(run, config, client)
