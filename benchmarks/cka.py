"""Exact CKA from layerdrift's streaming moments against torch_cka, side by side.

For each size N (tokens): a float16 store of two checkpoints (N x 384, as
``benchmarks/similarity.py`` writes it), then, in this one process:

- the reference: linear and debiased CKA by the float64 formula in feature space, summed
  over row chunks in numpy (an exact identity of the O(N²) Gram-matrix formula, which does
  not fit in memory at these N); above 200k tokens, to save time, the float64 moment
  formula itself (layerdrift's pass with float64 products), which is exact;
- layerdrift: the Dask moments pass over the store (float32 products summed in float64,
  the path that keeps CKA within 1e-6; and float64 products), then ``linear_cka`` and
  ``debiased_cka`` from the moments;
- torch_cka 0.21 (``pip install --no-deps torch-cka``), the package's own ``CKA.compare``
  on identity "models" fed the same features (float32, one seeded shuffle of the tokens
  shared by both sides), at several minibatch sizes: minibatch CKA (Nguyen et al. 2021),
  which averages unbiased HSIC over batches and so approximates CKA.

Reported: wall time (the median of ``--repeats`` calls, 3 by default; a call over 30 s is
not repeated), the peak resident memory added while computing (VmHWM reset before
each method; torch_cka additionally needs both feature matrices in memory, listed
separately), and each CKA's absolute error against the reference.

Usage: ``.venv/bin/python benchmarks/cka.py [--tokens 98304 983040] [--batches 256 1024]
[--repeats 3]``.
Prints a table and writes ``benchmarks/results/cka.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from similarity import write_store  # noqa: E402

from layerdrift.tasks.similarity.accumulate import accumulate_moments  # noqa: E402
from layerdrift.tasks.similarity.metrics import debiased_cka, linear_cka, unbiased_hsic  # noqa: E402

PAIR = ((0, 0), (1, 0))
ROWS = 65_536  # rows per chunk of the reference's float64 sums
REFERENCE_MAX = 200_000  # above, the reference is the float64 moment formula
REPEAT_MAX_S = 30.0  # a method slower than this is timed once


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measured(fn):
    """(result, seconds, peak bytes added to RSS) of one call."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak-RSS counter
    before = _status("VmRSS:")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, _status("VmHWM:") - before


def reference_cka(acts) -> dict[str, float]:
    """Linear and debiased CKA by the float64 formula, summed over row chunks."""
    n, d = acts.shape[2], acts.shape[3]
    sxy, sxx, syy = np.zeros((d, d)), np.zeros((d, d)), np.zeros((d, d))
    tx, ty, wx, wy, wxy_y, wyx_x = (np.zeros(d) for _ in range(6))
    dx = dy = dxx = dyy = dxy = 0.0
    for start in range(0, n, ROWS):
        x = np.asarray(acts[0, 0, start : start + ROWS], dtype=np.float64)
        y = np.asarray(acts[1, 0, start : start + ROWS], dtype=np.float64)
        sxy += x.T @ y
        sxx += x.T @ x
        syy += y.T @ y
        tx += x.sum(0)
        ty += y.sum(0)
        kx, ky = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        dx, dy = dx + kx.sum(), dy + ky.sum()
        dxx, dyy, dxy = dxx + kx @ kx, dyy + ky @ ky, dxy + kx @ ky
        wx, wy = wx + kx @ x, wy + ky @ y
        wxy_y, wyx_x = wxy_y + kx @ y, wyx_x + ky @ x
    cxy = sxy / n - np.outer(tx, ty) / n**2
    cxx = sxx / n - np.outer(tx, tx) / n**2
    cyy = syy / n - np.outer(ty, ty) / n**2
    linear = float(np.sum(cxy**2) / (np.linalg.norm(cxx) * np.linalg.norm(cyy)))
    hxy = unbiased_hsic(n, sxy, tx, ty, dx, dy, dxy, wxy_y, wyx_x)
    hxx = unbiased_hsic(n, sxx, tx, tx, dx, dx, dxx, wx, wx)
    hyy = unbiased_hsic(n, syy, ty, ty, dy, dy, dyy, wy, wy)
    return {"linear": linear, "debiased": float(hxy / np.sqrt(hxx * hyy))}


def layerdrift_cka(acts, multiply) -> dict[str, float]:
    """layerdrift's exact CKA: the moments pass, then the two formulas."""
    mask = np.ones(acts.shape[2], bool)
    selves, crosses = accumulate_moments(acts, [PAIR], mask, scheduler="threads", multiply=multiply)
    moments = (selves[PAIR[0]], selves[PAIR[1]], crosses[PAIR])
    return {"linear": linear_cka(*moments), "debiased": debiased_cka(*moments)}


def torch_cka_run(x, y, batch: int) -> float:
    """torch_cka's CKA.compare on identity models fed x and y (N, d) float32 tensors."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Identity()

        def forward(self, inputs):
            return self.layer(inputs)

    cka = CKA(Features(), Features(), "x", "y", ["layer"], ["layer"], device="cpu")
    loaders = [DataLoader(TensorDataset(t), batch_size=batch, drop_last=True) for t in (x, y)]
    with torch.inference_mode():
        cka.compare(*loaders)
    return float(cka.export()["CKA"][0, 0])


def one_size(n: int, batches: list[int], max_batch_1m: int, work: Path, repeats: int = 3) -> dict:
    """Every method at N = n tokens, each timed as the median of ``repeats`` calls."""
    import torch

    path = str(work / f"n{n}.zarr")
    write_store(path, 2, 1, n)
    acts = xr.open_zarr(path, consolidated=True)["activations"].data
    if n <= REFERENCE_MAX:
        ref, ref_s, _ = measured(lambda: reference_cka(acts))
        source = "float64 formula, numpy row chunks"
    else:  # the float64 moment formula is exact; the pass with float64 products computes it
        ref, ref_s, _ = measured(lambda: layerdrift_cka(acts, np.float64))
        source = "float64 moment formula (layerdrift, float64 products)"
    row: dict = {"tokens": n, "reference": ref, "reference_source": source,
                 "reference_s": ref_s, "methods": []}  # fmt: skip

    def record(name, fn, extra=None):
        # Medians of `repeats` calls (the first call of a method pays one-time costs, and
        # these machines drift); a call over REPEAT_MAX_S is not repeated.
        value, seconds, peak = measured(fn)
        times = [seconds]
        while len(times) < repeats and seconds < REPEAT_MAX_S:
            _, again, peak_again = measured(fn)
            times.append(again)
            peak = max(peak, peak_again)
        seconds = float(np.median(times))
        extra = {**(extra or {}), "all_seconds": times}
        if isinstance(value, float):
            value = {"minibatch": value}
        errors = {f"abs_err_vs_{k}": abs(v - ref[k]) for k, v in value.items() if k in ref}
        if "minibatch" in value:
            errors = {f"abs_err_vs_{k}": abs(value["minibatch"] - r) for k, r in ref.items()}
        row["methods"].append(
            {"name": name, "seconds": seconds, "peak_added_mib": peak / 2**20, "cka": value,
             **errors, **(extra or {})}
        )  # fmt: skip

    record("layerdrift exact, float32 products", lambda: layerdrift_cka(acts, np.float32))
    record("layerdrift exact, float64 products", lambda: layerdrift_cka(acts, np.float64))
    order = np.random.default_rng(0).permutation(n)
    features = [torch.from_numpy(np.asarray(acts[c, 0], dtype=np.float32)[order]) for c in (0, 1)]
    features_mib = 2 * features[0].numel() * 4 / 2**20
    for batch in batches:
        if n > 200_000 and batch > max_batch_1m:
            continue  # an N³-per-batch trace: minutes per setting at this N
        record(f"torch_cka minibatch {batch}", lambda b=batch: torch_cka_run(*features, b),
               {"batch": batch, "features_in_memory_mib": features_mib})  # fmt: skip
    features.clear()
    exact = [m for m in row["methods"] if m["name"].startswith("layerdrift exact, float32")][0]
    torch_runs = [m for m in row["methods"] if "batch" in m]
    if torch_runs:
        fastest = min(torch_runs, key=lambda m: m["seconds"])
        row["speedup_vs_fastest_torch_cka"] = fastest["seconds"] / exact["seconds"]
        row["fastest_torch_cka"] = fastest["name"]
    shutil.rmtree(path, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    """Run every size, print the table, write the JSON after each size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=[98_304, 983_040])
    parser.add_argument("--batches", type=int, nargs="*", default=[256, 1024, 4096])
    parser.add_argument("--max-batch-1m", type=int, default=1024,
                        help="largest torch_cka batch above 200k tokens")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="calls per method (median)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cka.json"))
    args = parser.parse_args(argv)
    import torch

    results: dict = {"torch_threads": torch.get_num_threads(), "repeats": args.repeats,
                     "load_average_before": list(os.getloadavg()), "sizes": []}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-cka-"))
    try:
        for n in args.tokens:
            results["sizes"].append(
                one_size(n, args.batches, args.max_batch_1m, work, args.repeats)
            )
            results["load_average"] = list(os.getloadavg())
            Path(args.out).write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    return results


def print_table(r: dict) -> None:
    """The benchmark as a plain-text table."""
    for size in r["sizes"]:
        ref = size["reference"]
        print(f"N = {size['tokens']} tokens x 384: reference linear {ref['linear']:.8f}, "
              f"debiased {ref['debiased']:.8f} ({size['reference_s']:.1f} s)")  # fmt: skip
        print(f"  {'method':<38} {'seconds':>8} {'peak MiB':>9} {'|err| linear':>13} "
              f"{'|err| debiased':>15}")  # fmt: skip
        for m in size["methods"]:
            print(f"  {m['name']:<38} {m['seconds']:>8.2f} {m['peak_added_mib']:>9.0f} "
                  f"{m['abs_err_vs_linear']:>13.2e} {m['abs_err_vs_debiased']:>15.2e}")  # fmt: skip
        if "fastest_torch_cka" in size:
            print(f"  exact (float32 products) vs {size['fastest_torch_cka']}: "
                  f"{size['speedup_vs_fastest_torch_cka']:.2f}x")  # fmt: skip
    print(f"load average at the end (2 shared cores): {r.get('load_average')}")


if __name__ == "__main__":
    main()
