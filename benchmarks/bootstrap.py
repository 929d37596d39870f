"""One layer's bootstrap intervals on a finished run: resamples with Procrustes from an SVD
against from eigenvalues (what the stage does), interleaved in one process.

Builds the layer's per-group moment stack once (as the similarity stage does), then times
:func:`tasks.similarity.bootstrap.bootstrap_intervals` alternately with every resample's
Procrustes distance from ``np.linalg.svd`` (``exact``) and from the eigenvalues of CᵀC (the
stage's resample path), and reports the largest difference between the two sets of bounds.

Usage: ``.venv/bin/python benchmarks/bootstrap.py runs/quick [--layer 3] [--repeats 4]``.
Prints a table and writes ``benchmarks/results/bootstrap.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

import numpy as np
from threadpoolctl import threadpool_limits

from layerdrift.config import load_run_config
from layerdrift.storage import RunDir
from layerdrift.tasks.similarity import bootstrap
from layerdrift.tasks.similarity import run as stage
from layerdrift.tasks.similarity.accumulate import group_moment_flats
from layerdrift.tasks.similarity.tables import checkpoint_pairs, pair_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import interleaved, print_medians  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bootstrap.json")
    args = parser.parse_args()
    run = RunDir(str(args.run))
    cfg = load_run_config(run.read_text("config.json"))
    ds = stage.open_store(run.activations())
    mask = stage.token_mask(ds, cfg.similarity.exclude_special, cfg.similarity.examples)
    acts, random = ds["activations"].data, None
    if cfg.similarity.random_floor:
        acts, random, _ = stage.with_random_reference(run, ds)
    previous = stage.previous_indices([str(c) for c in ds.checkpoint.values])
    groups = bootstrap.example_groups(
        ds["example_of_token"].values, mask, cfg.similarity.bootstrap_groups
    )
    n_groups = int(groups.max()) + 1
    counts = bootstrap.resample_counts(cfg.similarity.bootstrap_resamples, n_groups, cfg.seed)
    pairs = checkpoint_pairs(ds.sizes["checkpoint"], args.layer, random, previous)
    load_before = os.getloadavg()
    with threadpool_limits(limits=1, user_api="blas"):
        flats, plan, shifts = group_moment_flats(acts, pairs, groups, n_groups)
        stack = bootstrap.MomentStack.of_pass(flats, plan, shifts, acts.shape[3])
        point = pair_metrics(*bootstrap.total_moments(stack))

        def exact() -> dict:
            with mock.patch.object(
                bootstrap, "all_metrics", lambda sx, sy, xy, resample=False,
                f=bootstrap.all_metrics: f(sx, sy, xy, False)
            ):  # fmt: skip
                return bootstrap.bootstrap_intervals(stack, pairs, counts, point)

        def eigenvalues() -> dict:
            return bootstrap.bootstrap_intervals(stack, pairs, counts, point)

        times, bounds = interleaved({"exact": exact, "eigenvalues": eigenvalues}, args.repeats)
    differ = max(
        float(np.nanmax(np.abs(bounds["exact"][p] - bounds["eigenvalues"][p])))
        for p in pairs
        if p[0] != p[1]
    )
    median = print_medians("resample Procrustes", times)
    result = {
        "run": str(args.run),
        "layer": args.layer,
        "pairs": len([p for p in pairs if p[0] != p[1]]),
        "resamples": int(counts.shape[0]),
        "groups": n_groups,
        "seconds": times,
        "median_seconds": median,
        "speedup": median["exact"] / median["eigenvalues"],
        "largest_bound_difference": differ,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print(f"speedup {result['speedup']:.2f}x, bounds differ by <= {differ:.1e}, load {load_before}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
