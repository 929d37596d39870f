"""Scale-out with existing engines: a Dask cluster and object storage, through the CLI.

A local S3-compatible server (moto, on 127.0.0.1) holds the run directory, a LocalCluster of
two worker processes extracts the store, computes the similarity pass and trains the SAEs
and crosscoders (``--dask-address``), and the results and dictionary weights must equal those
of an ordinary local run of the same tiny config, run beside it.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import xarray as xr
from safetensors.numpy import load as load_safetensors
from tiny_runs import cli_env, start_cli, tail, tiny_config, to_toml

BUCKET = "layerdrift-scale-test"  # moto keeps buckets per process: one name per module
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on loopback with one bucket; the AWS environment points at it."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**AWS, "AWS_ENDPOINT_URL_S3": endpoint, "FSSPEC_S3_ENDPOINT_URL": endpoint}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem(endpoint_url=endpoint, anon=False).mkdir(BUCKET)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def dask_cluster(s3_endpoint):
    """Two Dask worker processes on loopback (started after the S3 environment is set)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        yield cluster


def test_run_on_s3_with_a_dask_cluster_matches_a_local_run(
    tmp_path, tiny_model_dir, separable_csv, s3_endpoint, dask_cluster, prefect_api_url
):
    # SAEs and feature comparisons of the last layer only: each feature task on the
    # loopback S3 server costs ~25 s, and the other layers add no new code path. The
    # crosscoder trains as briefly as the SAEs (the preset's 100k tokens add nothing here).
    config = tiny_config(
        tiny_model_dir, separable_csv, sae={"layers": [2]}, features={"token_budget": 2048}
    )
    (tmp_path / "tiny.toml").write_text(to_toml(config))
    remote_root = f"s3://{BUCKET}/runs"
    local = start_cli(
        ["run", "tiny.toml", "--runs-root", str(tmp_path / "local")],
        tmp_path,
        cli_env(tmp_path / "prefect-local", PREFECT_API_URL=prefect_api_url),
        tmp_path / "local.log",
    )
    remote = start_cli(
        [
            "run",
            "tiny.toml",
            "--runs-root",
            remote_root,
            "--dask-address",
            dask_cluster.scheduler_address,
        ],
        tmp_path,
        cli_env(tmp_path / "prefect-remote", PREFECT_API_URL=prefect_api_url, **s3_endpoint),
        tmp_path / "remote.log",
    )
    try:
        assert remote.wait(timeout=600) == 0, tail(tmp_path / "remote.log")
        assert local.wait(timeout=600) == 0, tail(tmp_path / "local.log")
    finally:
        for process in (local, remote):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint["AWS_ENDPOINT_URL_S3"])
    run_path = f"{BUCKET}/runs/tiny"
    assert fs.exists(f"{run_path}/report.html")
    assert not (tmp_path / "s3:").exists()  # no URL was taken for a local path
    groups = ("similarity", "probe_accuracy", "drift", "sae_metrics", "matched_fraction")
    for group in groups + ("crosscoder_counts", "transfer_fvu", "relative_norm_deviation"):
        want = xr.open_zarr(tmp_path / "local/tiny/results.zarr", group=group)
        got = xr.open_zarr(fs.get_mapper(f"{run_path}/results.zarr"), group=group)
        for name, expected in want.data_vars.items():
            np.testing.assert_allclose(
                got[name].values, expected.values, rtol=1e-5, atol=1e-6, err_msg=group
            )
    # The SAEs and the crosscoder were Dask tasks, and equal the ones trained in the flow.
    prefixes = set(dask_cluster.scheduler.task_prefixes)
    assert {"train_sae_for_run", "train_crosscoder_for_run"} <= prefixes, prefixes
    folders = ["saes/base/layer-2", "saes/final/layer-2", "crosscoders/layer-2"]
    for folder in folders:
        want = load_safetensors(
            (tmp_path / "local/tiny" / folder / "sae_weights.safetensors").read_bytes()
        )
        got = load_safetensors(fs.cat(f"{run_path}/{folder}/sae_weights.safetensors"))
        for name, expected in want.items():
            np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6, err_msg=folder)
    local_store = xr.open_zarr(tmp_path / "local/tiny/activations.zarr")
    remote_store = xr.open_zarr(fs.get_mapper(f"{run_path}/activations.zarr"))
    np.testing.assert_array_equal(
        remote_store["activations"].values, local_store["activations"].values
    )
