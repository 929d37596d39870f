"""The Dask moments pass against in-memory moments: chunk sizes, schedulers, masks, memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from factories import make_activation_store

from layerdrift.tasks.similarity.accumulate import accumulate_moments, plan_passes, token_mask
from layerdrift.tasks.similarity.drift import drift_array
from layerdrift.tasks.similarity.metrics import METRICS, all_metrics
from layerdrift.tasks.similarity.moments import cross_fields, moments_from_arrays, self_fields
from layerdrift.tasks.similarity.tables import similarity_pairs

ROOT = Path(__file__).resolve().parents[1]


def random_store(path, rng, n_ckpt=3, n_layer=2, hidden=12, token_chunk=64, n_examples=30):
    """A store whose checkpoints drift from base; returns (url, float16 activations)."""
    counts = rng.integers(3, 15, n_examples).tolist()
    n_token = sum(counts)
    base = rng.standard_normal((n_layer, n_token, hidden)) + rng.normal(0, 3, hidden)
    acts = np.stack([base + 0.4 * c * rng.standard_normal(base.shape) for c in range(n_ckpt)])
    acts = acts.astype(np.float16)
    labels = ["base", *[f"step-{c}" for c in range(1, n_ckpt - 1)], "final"]
    make_activation_store(str(path), acts, counts, checkpoints=labels, token_chunk=token_chunk)
    # The attributes storage.activations.open_store reads besides the factory's.
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update({"checkpoints": labels, "generation": "test-generation"})
    zarr.consolidate_metadata(str(path))
    return str(path), acts


def expected_metrics(acts, pairs, mask):
    out = {}
    for a, b in pairs:
        x, y = acts[a][mask], acts[b][mask]
        out[(a, b)] = all_metrics(*moments_from_arrays(x, y))
    return out


def pass_metrics(url, pairs, mask, **kwargs):
    ds = xr.open_zarr(url)
    selves, crosses = accumulate_moments(ds["activations"].data, pairs, mask, **kwargs)
    return {(a, b): all_metrics(selves[a], selves[b], crosses[(a, b)]) for a, b in pairs if a != b}


def assert_same(got, want):
    assert got.keys() <= want.keys() and got
    for key, value in got.items():
        np.testing.assert_allclose(value, want[key], rtol=1e-9, atol=1e-12, err_msg=str(key))


PAIRS = [((0, 0), (1, 0)), ((0, 1), (2, 1)), ((1, 1), (2, 1)), ((2, 0), (2, 1))]


@pytest.mark.parametrize("token_chunk", [7, 64, 5000])
def test_pass_matches_in_memory_for_any_chunking(tmp_path, rng, token_chunk):
    url, acts = random_store(tmp_path / "s.zarr", rng, token_chunk=token_chunk)
    mask = np.ones(acts.shape[2], bool)
    want = expected_metrics(acts, PAIRS, mask)
    assert_same(pass_metrics(url, PAIRS, mask, scheduler="threads"), want)
    # A tiny budget forces one pass per pair; the numbers must not change.
    assert_same(pass_metrics(url, PAIRS, mask, scheduler="threads", budget_bytes=1), want)


# The metrics the float32 products keep within 1e-6 (PWCCA's whitening and near-zero
# Procrustes distances amplify their rounding; see block_moments).
FLOAT32_METRICS = ("cosine", "linear_cka", "debiased_cka", "svcca", "norm_ratio")


def _assert_fields_within_1e_6(want, got, fields, label) -> None:
    """Each of ``fields`` (name, shape) of ``got`` within 1e-6 relative of ``want``."""
    for name, _ in fields:
        expected, actual = np.asarray(getattr(want, name)), np.asarray(getattr(got, name))
        err = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
        assert err < 1e-6, (label, name, err)


def test_float32_products_stay_within_1e_6_of_float64(tmp_path, rng):
    url, acts = random_store(tmp_path / "s.zarr", rng, token_chunk=64)
    mask = np.ones(acts.shape[2], bool)
    data = xr.open_zarr(url)["activations"].data
    s64, c64 = accumulate_moments(data, PAIRS, mask, multiply=np.float64)
    s32, c32 = accumulate_moments(data, PAIRS, mask, multiply=np.float32)
    # Every packed field, the per-token terms (norms, cosines, weighted sums) as well as
    # the products: float32 steps summed in float64 stay within 1e-6 of float64 throughout.
    for rep, s in s64.items():
        _assert_fields_within_1e_6(s, s32[rep], self_fields(s.dim), rep)
    for pair, c in c64.items():
        _assert_fields_within_1e_6(c, c32[pair], cross_fields(*c.cross.shape), pair)
    keep = [METRICS.index(m) for m in FLOAT32_METRICS]
    want = expected_metrics(acts, PAIRS, mask)  # the float64 formula
    for a, b in PAIRS:
        got = all_metrics(s32[a], s32[b], c32[(a, b)])
        np.testing.assert_allclose(got[keep], want[(a, b)][keep], rtol=1e-6, err_msg=str((a, b)))


def test_schedulers_agree(tmp_path, rng):
    from distributed import Client, LocalCluster

    url, acts = random_store(tmp_path / "s.zarr", rng, token_chunk=32)
    mask = np.ones(acts.shape[2], bool)
    want = expected_metrics(acts, PAIRS, mask)
    assert_same(pass_metrics(url, PAIRS, mask, scheduler="synchronous"), want)
    assert_same(pass_metrics(url, PAIRS, mask, scheduler="threads"), want)
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        assert_same(pass_metrics(url, PAIRS, mask, scheduler=client), want)
        # The whole stage on the cluster: open_store's reader and the drift write travel.
        from layerdrift.config import RunConfig
        from layerdrift.storage import RunDir, open_result
        from layerdrift.tasks.similarity.run import compute_similarity

        run = RunDir(str(tmp_path / "run"))
        shutil.copytree(url, run.activations())
        compute_similarity(run, RunConfig(similarity={"probes": False}), client)
    sim = open_result(run.results(), "similarity")["similarity"]
    got = sim.sel(reference="base", checkpoint="final", layer=1).values
    np.testing.assert_allclose(got, want[((0, 1), (2, 1))], rtol=1e-9)
    drift = open_result(run.results(), "drift")["drift"].values
    x = acts.astype(np.float64)
    cos = np.sum(x * x[:1], -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(x[:1], axis=-1))
    np.testing.assert_allclose(drift, 1 - cos, atol=1e-6)


def test_token_selection(tmp_path, rng):
    url, acts = random_store(tmp_path / "s.zarr", rng, token_chunk=16)
    ds = xr.open_zarr(url)
    examples = [1, 2, 7, 20]
    mask = token_mask(ds, exclude_special=True, examples=examples)
    direct = np.isin(ds["example_of_token"].values, examples) & ~ds["is_special"].values
    np.testing.assert_array_equal(mask, direct)
    assert_same(pass_metrics(url, PAIRS, mask), expected_metrics(acts, PAIRS, mask))
    with pytest.raises(ValueError, match=r"similarity.examples \[99\]"):
        token_mask(ds, examples=[99])


def test_plan_passes_covers_every_pair_once():
    pairs = similarity_pairs(4, 5, [0, 3])
    plans = plan_passes(pairs, hidden=16, budget_bytes=3 * 16 * 16 * 8)
    assert len(plans) > 3
    cross = [p for plan in plans for p in plan.pairs]
    selves = [r for plan in plans for r in plan.self_reps]
    assert sorted(cross) == sorted(p for p in pairs if p[0] != p[1])
    assert sorted(selves) == sorted({r for p in pairs for r in p})
    for plan in plans:
        assert set(plan.self_reps) <= set(plan.reps)
        assert {r for p in plan.pairs for r in p} <= set(plan.reps)


def test_drift_matches_direct(tmp_path, rng):
    url, acts = random_store(tmp_path / "s.zarr", rng, token_chunk=20)
    drift = drift_array(xr.open_zarr(url))
    assert drift.dtype == np.float32 and drift.chunks is not None  # lazy, Dask-backed
    tokens = rng.choice(acts.shape[2], 25, replace=False)
    x = acts.astype(np.float64)
    for c, layer, t in zip(rng.integers(0, 3, 25), rng.integers(0, 2, 25), tokens, strict=True):
        a, b = x[0, layer, t], x[c, layer, t]
        want = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert float(drift[c, layer, t]) == pytest.approx(want, abs=1e-6)
    np.testing.assert_array_equal(drift["example_of_token"], xr.open_zarr(url)["example_of_token"])


MEMORY_SCRIPT = """
import json, sys
import numpy as np, xarray as xr
from layerdrift.tasks.similarity.accumulate import accumulate_moments

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

ds = xr.open_zarr(sys.argv[1])
acts = ds["activations"].data
mask = np.ones(acts.shape[2], bool)
accumulate_moments(acts[:, :, :20000], [((0, 0), (1, 0))], mask[:20000])  # warm-up
out = {}
for name, work in [
    ("pass", lambda: accumulate_moments(acts, [((0, 0), (1, 0))], mask, scheduler="threads")),
    ("load", lambda: np.asarray(acts, dtype=np.float64).sum()),  # control: holds the data
]:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak-RSS counter (VmHWM)
    before = status("VmRSS:")
    work()
    out[name] = (status("VmHWM:") - before) / 1024
print(json.dumps(out))
"""


def test_pass_memory_is_bounded(tmp_path):
    """A 128 MiB store in 2 MiB chunks: the pass adds far less than the data's size to RSS."""
    n_token, hidden, chunk = 2**18, 128, 8192
    url = str(tmp_path / "big.zarr")
    rng = np.random.default_rng(1)
    ds = xr.Dataset(
        {"activations": (("checkpoint", "layer", "token", "hidden"),
                         np.zeros((2, 1, n_token, hidden), np.float16))},
    )  # fmt: skip
    ds.to_zarr(url, mode="w", compute=False, zarr_format=3, consolidated=True,
               encoding={"activations": {"chunks": (1, 1, chunk, hidden)}})  # fmt: skip
    arr = zarr.open_array(url, path="activations", mode="r+")
    for c in range(2):
        for start in range(0, n_token, chunk * 8):
            block = rng.standard_normal((1, chunk * 8, hidden)).astype(np.float16)
            arr[c, :, start : start + chunk * 8] = block
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY_SCRIPT), url],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    grown = json.loads(result.stdout.strip().splitlines()[-1])
    data_mib = 2 * n_token * hidden * 2 / 2**20
    assert data_mib == 128
    # The control really holds the data, so the measurement can see it.
    assert grown["load"] > data_mib, grown
    assert grown["pass"] < 48, f"peak RSS grew by {grown['pass']:.0f} MiB on 128 MiB of data"


def test_compute_similarity_writes_every_group(tmp_path, rng):
    import pandas as pd

    from layerdrift.config import RunConfig
    from layerdrift.storage import RunDir, open_result
    from layerdrift.tasks.similarity.run import compute_similarity, similarity_complete

    run = RunDir(str(tmp_path / "run"))
    _, acts = random_store(run.activations(), rng, token_chunk=40)
    cfg = RunConfig(similarity={"probe_folds": 2, "exclude_special": True})
    assert not similarity_complete(run)
    summary = compute_similarity(run, cfg)
    assert similarity_complete(run)

    sim = xr.open_zarr(run.results(), group="similarity")["similarity"]
    assert sim.dims == ("reference", "checkpoint", "layer", "metric")
    assert sim.attrs["exclude_special"] is True and sim.attrs["examples"] == "all"
    assert np.isnan(sim.sel(reference="previous", checkpoint="base")).all()
    mask = ~xr.open_zarr(run.activations())["is_special"].values
    x, y = acts[0, 1][mask], acts[2, 1][mask]
    want = all_metrics(*moments_from_arrays(x, y))
    np.testing.assert_allclose(sim.sel(reference="base", checkpoint="final", layer=1), want)
    prev = all_metrics(*moments_from_arrays(acts[1, 0][mask], acts[2, 0][mask]))
    np.testing.assert_allclose(sim.sel(reference="previous", checkpoint="final", layer=0), prev)
    assert summary["cosine_final_vs_base"][1] == pytest.approx(want[0], abs=1e-6)

    layers = open_result(run.results(), "layer_similarity")["layer_similarity"]
    assert list(layers["checkpoint"].values) == ["base", "final"]
    np.testing.assert_allclose(layers.sel(metric="linear_cka", layer=1, layer_other=1), 1.0)
    cross = all_metrics(*moments_from_arrays(acts[2, 0][mask], acts[2, 1][mask]))
    np.testing.assert_allclose(layers.sel(checkpoint="final", layer=0, layer_other=1), cross)

    drift = open_result(run.results(), "drift")["drift"]
    assert drift.dtype == np.float32 and drift.shape == acts.shape[:3]
    probes = open_result(run.results(), "probe_accuracy")["probe_accuracy"]
    assert probes.dims == ("checkpoint", "layer", "pooling")
    assert np.isfinite(probes.values).all()
    control = open_result(run.results(), "probe_control_accuracy")["probe_control_accuracy"]
    assert control.dims == probes.dims and np.isfinite(control.values).all()
    assert float(open_result(run.results(), "majority_rate")["majority_rate"]) == 0.5

    ci = open_result(run.results(), "similarity_ci")["similarity_ci"]
    assert ci.dims == (*sim.dims, "bound") and ci.attrs["resamples"] == 100
    finite = np.isfinite(sim.values)
    low, high = ci.sel(bound="low").values[finite], ci.sel(bound="high").values[finite]
    assert (low <= high).all() and np.isfinite(low).all()
    assert np.isnan(ci.sel(reference="previous", checkpoint="base")).all()

    frame = pd.read_csv(run.child_url("similarity.csv"))
    assert list(frame.columns) == ["reference", "checkpoint", "layer", "metric", "value"]
    assert len(frame) == sim.size

    group = zarr.open_group(run.activations(), mode="r+")
    group.attrs["generation"] = "a-new-store"
    assert not similarity_complete(run)


def test_task_retries_transient_errors_only():
    from prefect.states import Failed

    from layerdrift.tasks.retry import retry_unless_bad_input as _transient
    from layerdrift.tasks.similarity.run import compute_similarity_task

    assert compute_similarity_task.retries == 2
    assert compute_similarity_task.retry_condition_fn is _transient
    assert _transient(None, None, Failed(data=OSError("connection reset")))
    assert not _transient(None, None, Failed(data=ValueError("store incomplete")))
