"""The pipeline flow on a tiny model: every stage runs, a rerun is served from cache, and a
deleted output is rebuilt rather than trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_runs
import xarray as xr

from layerdrift.config import RunConfig


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir, separable_csv) -> RunConfig:
    values = tiny_runs.tiny_config(tiny_model_dir, separable_csv)
    return RunConfig.model_validate({**values, "runs_root": str(tmp_path / "runs")})


def test_pipeline_runs_every_stage_then_serves_a_rerun_from_cache(prefect_harness, tiny_config):
    from layerdrift.flows.pipeline import pipeline

    first = pipeline(tiny_config)
    assert first["checkpoints"][0] == "base" and first["checkpoints"][-1] == "final"
    assert all(state == "ran" for state in first["stages"].values()), first["stages"]
    run_dir = first["run_dir"]
    saved = json.loads(open(f"{run_dir}/config.json").read())
    assert saved["config_hash"] == tiny_config.config_hash()
    similarity = xr.open_zarr(f"{run_dir}/results.zarr", group="similarity").similarity
    assert set(similarity.checkpoint.values) == set(first["checkpoints"])

    second = pipeline(tiny_config)
    assert all(state == "cached" for state in second["stages"].values()), second["stages"]

    # A deleted checkpoint folder is rebuilt, not trusted from the cache.
    shutil.rmtree(f"{run_dir}/checkpoints/final")
    third = pipeline(tiny_config)
    assert third["stages"]["finetune"] == "ran"
    assert (Path(run_dir) / "checkpoints" / "final" / "metrics.json").is_file()
    assert third["stages"]["similarity"] == "cached"
