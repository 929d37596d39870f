"""The similarity stage of a run, this code against an earlier commit's, side by side.

The earlier ``tasks/similarity`` package is taken from git (``--baseline``, a commit) into a
temporary package, so both versions run in this one process on the same activation store
(``<run>/activations.zarr``, e.g. of ``layerdrift run --preset quick``), each writing its own
copy of the run's results. Timed: the baseline stage, this stage without intervals
and without the random floor (``bootstrap_resamples = 0``, the baseline's work plus the
probes' control task) and this stage as configured (intervals, and the floor when the run
has ``random.zarr``). Also reported: the largest difference between the two ``similarity``
tables (both exact, so rounding only).

Usage: ``.venv/bin/python benchmarks/similarity_stage.py runs/quick [--baseline 9feacce]``.
Prints a table and writes ``benchmarks/results/similarity_stage.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tasks/similarity"


def baseline_package(commit: str, into: Path) -> str:
    """Write ``tasks/similarity`` of ``commit`` as the package ``baseline_similarity``."""
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{commit}:{PACKAGE}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    target = into / "baseline_similarity"
    target.mkdir(parents=True)
    for name in names:
        source = subprocess.run(["git", "show", f"{commit}:{PACKAGE}/{name}"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        source = re.sub(r"layerdrift\.tasks\.similarity\b", "baseline_similarity", source)
        (target / name).write_text(source)
    sys.path.insert(0, str(into))
    return "baseline_similarity"


def copy_run(run: Path, into: Path) -> Path:
    """A run folder sharing ``run``'s activation stores (linked: the probe set's and the
    random floor's), without results."""
    into.mkdir(parents=True)
    for store in ("activations.zarr", "random.zarr"):
        if (run / store).exists():
            (into / store).symlink_to((run / store).resolve())
    shutil.copy(run / "config.json", into / "config.json")
    return into


def timed(fn) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Run both stages, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder with activations.zarr and config.json")
    parser.add_argument("--baseline", default="9feacce", help="commit to compare with")
    parser.add_argument("--resamples", type=int, help="override bootstrap_resamples")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/similarity_stage.json"))
    args = parser.parse_args(argv)
    from layerdrift.config import load_run_config
    from layerdrift.storage import RunDir, open_result
    from layerdrift.tasks.similarity.run import compute_similarity

    run = Path(args.run)
    cfg = load_run_config((run / "config.json").read_text())
    if args.resamples is not None:
        cfg = _with_resamples(cfg, args.resamples)
    no_ci = _with_resamples(cfg, 0, random_floor=False)  # the baseline's work
    work = Path(tempfile.mkdtemp(prefix="bench-stage-"))
    try:
        old = importlib.import_module(baseline_package(args.baseline, work) + ".run")
        runs = {name: RunDir(str(copy_run(run, work / name))) for name in ("old", "new", "ci")}
        load_before = os.getloadavg()
        seconds = {}
        for name, fn in [
            ("baseline", lambda: old.compute_similarity(runs["old"], cfg)),
            ("new_without_intervals", lambda: compute_similarity(runs["new"], no_ci)),
            ("new_as_configured", lambda: compute_similarity(runs["ci"], cfg)),
        ]:
            seconds[name] = timed(fn)
            print(f"{name}: {seconds[name]:.2f} s, load {os.getloadavg()}", flush=True)
        tables = {k: open_result(runs[k].results(), "similarity")["similarity"] for k in runs}
        # The baseline has no random floor: compare the references it has.
        tables = {k: t.sel(reference=tables["old"].reference) for k, t in tables.items()}
        ci = open_result(runs["ci"].results(), "similarity_ci")["similarity_ci"]
        differences = {k: _max_rel(tables["old"], tables[k]) for k in ("new", "ci")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "run": str(run),
        "baseline": args.baseline,
        "tokens": int(xr.open_zarr(run / "activations.zarr").sizes["token"]),
        "seconds": seconds,
        "speedup_without_intervals": seconds["baseline"] / seconds["new_without_intervals"],
        "max_rel_difference_vs_baseline": differences,
        "bootstrap": {k: ci.attrs[k] for k in ("resamples", "groups", "level")},
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print_table(result)
    return result


def _with_resamples(cfg, resamples: int, **more):
    update = {"bootstrap_resamples": resamples, **more}
    similarity = cfg.similarity.model_copy(update=update)
    return cfg.model_copy(update={"similarity": similarity})


def _max_rel(a: xr.DataArray, b: xr.DataArray) -> float:
    """Largest relative difference among values above 1e-6 in size (a checkpoint against
    itself gives distances of 1e-16 whose relative rounding means nothing)."""
    x, y = np.asarray(a.values), np.asarray(b.values)
    keep = np.isfinite(x) & np.isfinite(y) & (np.abs(x) > 1e-6)
    return float(np.max(np.abs(x[keep] - y[keep]) / np.abs(x[keep])))


def print_table(r: dict) -> None:
    """The benchmark as a plain-text table."""
    s = r["seconds"]
    print(f"similarity stage on {r['run']} ({r['tokens']} tokens), baseline {r['baseline']}")
    print(f"  baseline stage                      {s['baseline']:8.2f} s")
    print(f"  this stage, no intervals, no floor  {s['new_without_intervals']:8.2f} s")
    b = r["bootstrap"]
    print(f"  this stage, {b['resamples']} resamples x {b['groups']} groups"
          f"{s['new_as_configured']:10.2f} s")  # fmt: skip
    print(f"  speed-up without intervals          {r['speedup_without_intervals']:8.2f}x")
    for k, v in r["max_rel_difference_vs_baseline"].items():
        print(f"  largest relative difference ({k})   {v:8.1e}")
    print(f"load average before/after (2 shared cores): {r['load_average']}")


if __name__ == "__main__":
    main()
