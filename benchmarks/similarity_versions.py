"""The similarity stage as configured, an earlier commit's against this tree's, interleaved.

``benchmarks/similarity_stage.py`` times the baseline against this stage with and without
intervals once each; this one times both versions *as configured* (bootstrap intervals and
random floor included), alternating old, new, old, new ... in one process on the same
activation store, so that a shared machine's load falls on both alike, and checks that
every results group the two write is bit-identical.

Usage: ``.venv/bin/python benchmarks/similarity_versions.py RUN --baseline COMMIT
[--repeats 3] [--out FILE]``; RUN is a run folder with ``activations.zarr`` (and
``random.zarr``) and ``config.json``, e.g. of ``layerdrift run --preset quick``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from similarity_stage import baseline_package, copy_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def identical_groups(old_results: str, new_results: str) -> dict[str, bool]:
    """Per results group of the old run: whether the new run wrote the same values, bit for
    bit (NaN equal to NaN)."""
    from layerdrift.storage import list_results, open_result

    same: dict[str, bool] = {}
    for group in list_results(old_results):
        x = np.asarray(open_result(old_results, group)[group].values)
        y = np.asarray(open_result(new_results, group)[group].values)
        floats = x.dtype.kind == "f"
        same[group] = bool(np.array_equal(x, y, equal_nan=floats))
    return same


def main(argv: list[str] | None = None) -> dict:
    """Time both versions ``--repeats`` times each, compare their outputs, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder with activations.zarr and config.json")
    parser.add_argument("--baseline", required=True, help="commit to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/similarity_versions.json"))
    args = parser.parse_args(argv)
    from layerdrift.config import load_run_config
    from layerdrift.storage import RunDir
    from layerdrift.tasks.similarity.run import compute_similarity

    run = Path(args.run)
    cfg = load_run_config((run / "config.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="bench-versions-"))
    seconds: dict[str, list[float]] = {"baseline": [], "new": []}
    loads: list[dict] = []
    try:
        old = importlib.import_module(baseline_package(args.baseline, work) + ".run")
        versions = {"baseline": old.compute_similarity, "new": compute_similarity}
        for i in range(args.repeats):
            for name, fn in versions.items():
                target = RunDir(str(copy_run(run, work / f"{name}{i}")))
                before = os.getloadavg()
                start = time.perf_counter()
                fn(target, cfg)
                seconds[name].append(time.perf_counter() - start)
                loads.append({"run": f"{name}{i}", "before": before, "after": os.getloadavg()})
                print(f"{name} {i}: {seconds[name][-1]:.1f} s, load {loads[-1]}", flush=True)
        same = identical_groups(
            RunDir(str(work / "baseline0")).results(), RunDir(str(work / "new0")).results()
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    result = {
        "run": str(run),
        "baseline": args.baseline,
        "bootstrap_resamples": cfg.similarity.bootstrap_resamples,
        "random_floor": cfg.similarity.random_floor,
        "seconds": seconds,
        "median_seconds": median,
        "speedup": median["baseline"] / median["new"],
        "identical_groups": same,
        "load_average": loads,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_seconds", "speedup", "identical_groups")}))
    return result


if __name__ == "__main__":
    main()
