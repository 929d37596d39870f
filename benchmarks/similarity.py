"""Benchmark of the similarity stage's moments pass.

1. Throughput: the Dask moments pass over a float16 Zarr store (one pair: XᵀX, YᵀY, XᵀY and
   the per-token terms) against in-memory numpy ``X.T @ Y`` (float64) on the same data; the
   same pass with float32 products and its error against float64, per metric; XᵀX by
   numpy and by BLAS ``dsyrk`` (one triangle) on one thread.
2. Peak RSS of the pass over a store of several GB (base vs final at every layer), in a
   fresh process.
3. Minibatch CKA (Nguyen et al. 2021, "Do Wide and Deep Networks Learn the Same Things?":
   unbiased HSIC averaged over minibatches) at batch sizes 256..4096: time and error against
   the exact linear and debiased CKA of the full data.

Usage: ``.venv/bin/python benchmarks/similarity.py [--tokens 98304] [--big-gb 4.3]
[--real-store runs/quick/activations.zarr]``.
Prints a table and writes ``benchmarks/results/similarity.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from scipy.linalg.blas import dsyrk
from threadpoolctl import threadpool_limits
from zarr.codecs import Crc32cCodec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from layerdrift.tasks.similarity.accumulate import accumulate_moments  # noqa: E402
from layerdrift.tasks.similarity.metrics import (  # noqa: E402
    METRICS,
    all_metrics,
    debiased_cka,
    linear_cka,
)

HIDDEN = 384
CHUNK = 4096


def write_store(path: str, n_ckpt: int, n_layer: int, n_token: int, hidden: int = HIDDEN) -> None:
    """A float16 store (checkpoint, layer, token, hidden) in (1, 1, CHUNK, hidden) chunks.

    Blocks come from a pool of random blocks with cheap per-block changes, so writing GBs is
    I/O-bound; checkpoint c = base mixed with another pool block, so CKA is neither 0 nor 1.
    Random float16 barely compresses.
    """
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((CHUNK, hidden)).astype(np.float32) + 1.0 for _ in range(16)]
    group = zarr.open_group(path, mode="w", zarr_format=3)
    arr = group.create_array(
        "activations",
        shape=(n_ckpt, n_layer, n_token, hidden),
        chunks=(1, 1, CHUNK, hidden),
        dtype="float16",
        dimension_names=["checkpoint", "layer", "token", "hidden"],
        # As the extract stage writes its store (storage/activations.py): raw float16 bytes
        # with a CRC32C checksum, NaN for chunks not written; not zarr's default zstd,
        # whose decoding took half of a pair's read time.
        compressors=[Crc32cCodec()],
        fill_value=np.nan,
    )
    for layer in range(n_layer):
        for i, start in enumerate(range(0, n_token, CHUNK)):
            stop = min(start + CHUNK, n_token)
            base = pool[(i + layer) % 16][: stop - start] * (1.0 + 0.001 * i)
            arr[0, layer, start:stop] = base.astype(np.float16)
            for c in range(1, n_ckpt):
                other = pool[(i * 7 + c + layer) % 16][: stop - start]
                arr[c, layer, start:stop] = (base * (1 - 0.2 * c) + 0.5 * other).astype(np.float16)
    zarr.consolidate_metadata(path)


def open_acts(path: str):
    """The store's activations as a Dask array with the store's chunks."""
    return xr.open_zarr(path, consolidated=True)["activations"].data


def best_of(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def throughput(path: str, n_token: int, repeats: int) -> dict:
    """Moments pass vs in-memory numpy products on the same (n_token, HIDDEN) pair."""
    acts = open_acts(path)
    x = np.asarray(acts[0, 0], dtype=np.float64)
    y = np.asarray(acts[1, 0], dtype=np.float64)
    mask = np.ones(n_token, bool)
    t_xy = best_of(lambda: x.T @ y, repeats)
    t_three = best_of(lambda: (x.T @ x, y.T @ y, x.T @ y), repeats)
    with threadpool_limits(limits=1, user_api="blas"):
        t_xy_1 = best_of(lambda: x.T @ y, repeats)
    with threadpool_limits(limits=1, user_api="blas"):
        t_gram_1 = best_of(lambda: x.T @ x, repeats)
        t_syrk_1 = best_of(lambda: dsyrk(1.0, x, trans=1), repeats)
    pair = [((0, 0), (1, 0))]
    t_pass = best_of(lambda: accumulate_moments(acts, pair, mask, scheduler="threads"), repeats)
    t_pass32 = best_of(
        lambda: accumulate_moments(acts, pair, mask, scheduler="threads", multiply=np.float32),
        repeats,
    )
    selves, crosses = accumulate_moments(acts, pair, mask)
    moments = (selves[(0, 0)], selves[(1, 0)], crosses[pair[0]])
    s32, c32 = accumulate_moments(acts, pair, mask, multiply=np.float32)
    exact = all_metrics(*moments)
    fast = all_metrics(s32[(0, 0)], s32[(1, 0)], c32[pair[0]])
    cross_err = np.linalg.norm(c32[pair[0]].cross - crosses[pair[0]].cross) / np.linalg.norm(
        crosses[pair[0]].cross
    )
    return {
        "numpy_xtx_1thread_s": t_gram_1,
        "scipy_dsyrk_1thread_s": t_syrk_1,
        "moments_pass_float32_products_s": t_pass32,
        "ratio_float32_pass_vs_same_products": t_three / t_pass32,
        "float32_rel_err_xty": float(cross_err),
        "float32_rel_err_metrics": {
            m: float(abs(f - e) / abs(e)) for m, f, e in zip(METRICS, fast, exact, strict=True)
        },
        "tokens": n_token,
        "hidden": HIDDEN,
        "numpy_xty_s": t_xy,
        "numpy_xtx_yty_xty_s": t_three,
        "numpy_xty_1thread_s": t_xy_1,
        "moments_pass_s": t_pass,
        "ratio_vs_xty": t_xy / t_pass,
        "ratio_vs_same_products": t_three / t_pass,
        "linear_cka": linear_cka(*moments),
        "debiased_cka": debiased_cka(*moments),
        "_xy": (x, y),
    }


def float32_errors_on_store(path: str) -> dict:
    """Largest relative error of each metric with float32 products, over every pair the
    stage measures on a real store (e.g. a run's activations.zarr), against float64."""
    from layerdrift.tasks.similarity.tables import pair_metrics, similarity_pairs

    acts = xr.open_zarr(path)["activations"].data
    mask = np.ones(acts.shape[2], bool)
    pairs = similarity_pairs(acts.shape[0], acts.shape[1], [0, acts.shape[0] - 1])
    values = {}
    for dtype in (np.float64, np.float32):
        selves, crosses = accumulate_moments(acts, pairs, mask, multiply=dtype)
        values[dtype] = pair_metrics(selves, crosses, both_ways=True)
    worst = dict.fromkeys(METRICS, 0.0)
    for key, exact in values[np.float64].items():
        fast = values[np.float32][key]
        for i, metric in enumerate(METRICS):
            if np.isfinite(exact[i]) and exact[i] != 0:
                worst[metric] = max(worst[metric], abs(fast[i] - exact[i]) / abs(exact[i]))
    return {"store": path, "tokens": int(acts.shape[2]), "max_rel_err": worst}


def _unbiased_hsic_gram(k: np.ndarray, g: np.ndarray) -> float:
    n = k.shape[0]
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(g, 0.0)
    ones_k, ones_g = k.sum(axis=0), g.sum(axis=0)
    value = np.sum(k * g) + ones_k.sum() * ones_g.sum() / ((n - 1) * (n - 2))
    value -= 2.0 / (n - 2) * ones_k @ ones_g
    return float(value / (n * (n - 3)))


def minibatch_cka(x: np.ndarray, y: np.ndarray, batch: int, seed: int = 0) -> float:
    """Nguyen et al. 2021: mean unbiased HSIC over shuffled minibatches, then the CKA ratio."""
    order = np.random.default_rng(seed).permutation(x.shape[0])
    sums = np.zeros(3)
    for start in range(0, x.shape[0] - batch + 1, batch):
        idx = order[start : start + batch]
        xb, yb = x[idx], y[idx]  # float32, as GPU/torch minibatch CKA code runs
        kx, ky = (xb @ xb.T).astype(np.float64), (yb @ yb.T).astype(np.float64)
        sums += [
            _unbiased_hsic_gram(kx.copy(), ky.copy()),
            _unbiased_hsic_gram(kx.copy(), kx.copy()),
            _unbiased_hsic_gram(ky.copy(), ky.copy()),
        ]
    return float(sums[0] / np.sqrt(sums[1] * sums[2]))


RSS_SCRIPT = """
import json, sys, time
import numpy as np, xarray as xr
from layerdrift.tasks.similarity.accumulate import accumulate_moments
acts = xr.open_zarr(sys.argv[1], consolidated=True)["activations"].data
pairs = [((0, l), (1, l)) for l in range(acts.shape[1])]
start = time.perf_counter()
accumulate_moments(acts, pairs, np.ones(acts.shape[2], bool), scheduler="threads")
elapsed = time.perf_counter() - start
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(json.dumps({"seconds": elapsed, "peak_rss_mib": hwm / 1024}))
"""


def peak_rss(path: str) -> dict:
    """Run the pass over every layer's base-vs-final pair in a fresh process."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(RSS_SCRIPT), path], cwd=ROOT,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, write the JSON (after every section)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=98_304)
    parser.add_argument("--big-gb", type=float, default=4.3, help="0 skips the RSS run")
    parser.add_argument("--big-hidden", type=int, default=128, help="hidden size of that store")
    parser.add_argument("--batches", type=int, nargs="*", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--real-store", help="a run's activations.zarr: float32 errors there")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "similarity.json"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"throughput": None, "minibatch_cka": [], "big_store": None}
    if args.real_store:
        results["float32_on_real_store"] = float32_errors_on_store(args.real_store)

    def save() -> None:
        out.write_text(json.dumps(results, indent=2))

    work = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    try:
        small = str(work / "small.zarr")
        write_store(small, 2, 1, args.tokens)
        tp = throughput(small, args.tokens, args.repeats)
        x, y = tp.pop("_xy")
        results["throughput"] = tp
        save()
        x, y = x.astype(np.float32), y.astype(np.float32)
        for batch in args.batches:
            start = time.perf_counter()
            value = minibatch_cka(x, y, batch)
            seconds = time.perf_counter() - start
            results["minibatch_cka"].append(
                {"batch": batch, "seconds": seconds, "cka": value,
                 "abs_err_vs_linear": abs(value - tp["linear_cka"]),
                 "abs_err_vs_debiased": abs(value - tp["debiased_cka"])}
            )  # fmt: skip
            save()
        del x, y
        if args.big_gb > 0:
            n_layer, hidden = 7, args.big_hidden
            n_token = int(args.big_gb * 2**30 / (2 * n_layer * hidden * 2)) // CHUNK * CHUNK
            path = str(work / "big.zarr")
            start = time.perf_counter()
            write_store(path, 2, n_layer, n_token, hidden)
            size = 2 * n_layer * n_token * hidden * 2
            big = {"tokens": n_token, "layers": n_layer, "hidden": hidden, "gib": size / 2**30,
                   "write_s": time.perf_counter() - start}  # fmt: skip
            big.update(peak_rss(path))
            big["gb_per_s"] = size / 1e9 / big["seconds"]
            results["big_store"] = big
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average"] = list(os.getloadavg())
    save()
    print_table(results)
    return results


def print_table(r: dict) -> None:
    """The benchmark as a plain-text table."""
    tp = r["throughput"]
    print(f"moments pass, {tp['tokens']} tokens x {tp['hidden']} (one pair, float16 store)")
    print(f"  numpy X.T@Y in memory (float64)      {tp['numpy_xty_s']:8.3f} s")
    print(f"  numpy X.T@Y, BLAS on 1 thread        {tp['numpy_xty_1thread_s']:8.3f} s")
    print(f"  numpy XtX, YtY, XtY in memory        {tp['numpy_xtx_yty_xty_s']:8.3f} s")
    print(f"  Dask moments pass from Zarr          {tp['moments_pass_s']:8.3f} s")
    print(f"  throughput ratio vs X.T@Y            {tp['ratio_vs_xty']:8.2f}")
    print(f"  throughput ratio vs same products    {tp['ratio_vs_same_products']:8.2f}")
    print(f"  pass with float32 products           {tp['moments_pass_float32_products_s']:8.3f} s"
          f" (ratio {tp['ratio_float32_pass_vs_same_products']:.2f})")  # fmt: skip
    print(
        f"  float32 products: rel. error XtY {tp['float32_rel_err_xty']:.1e}; metrics "
        + ", ".join(f"{k} {v:.1e}" for k, v in tp["float32_rel_err_metrics"].items())
    )
    print(f"  XtX on 1 thread: numpy {tp['numpy_xtx_1thread_s']:.3f} s, "
          f"dsyrk {tp['scipy_dsyrk_1thread_s']:.3f} s")  # fmt: skip
    print(f"  exact linear CKA {tp['linear_cka']:.6f}, debiased CKA {tp['debiased_cka']:.6f}")
    print("minibatch CKA (Nguyen et al. 2021), one epoch")
    print(f"  {'batch':>6} {'seconds':>9} {'cka':>9} {'|err| lin':>10} {'|err| deb':>10}")
    for row in r["minibatch_cka"]:
        print(f"  {row['batch']:>6} {row['seconds']:>9.3f} {row['cka']:>9.6f} "
              f"{row['abs_err_vs_linear']:>10.2e} {row['abs_err_vs_debiased']:>10.2e}")  # fmt: skip
    big = r["big_store"]
    if big:
        print(f"big store: {big['gib']:.2f} GiB ({big['tokens']} tokens x {big['layers']} layers "
              f"x 2 checkpoints x {big['hidden']}), pass over 7 pairs: {big['seconds']:.1f} s "
              f"({big['gb_per_s']:.2f} GB/s), peak RSS {big['peak_rss_mib']:.0f} MiB")  # fmt: skip
    real = r.get("float32_on_real_store")
    if real:
        print(f"float32 products on {real['store']} ({real['tokens']} tokens), largest "
              "relative error per metric: "
              + ", ".join(f"{k} {v:.1e}" for k, v in real["max_rel_err"].items()))  # fmt: skip
    print(f"load average during the run (2 shared cores): {r.get('load_average')}")


if __name__ == "__main__":
    main()
