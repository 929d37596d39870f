"""The pipeline flow on a tiny model: every stage runs, a rerun is served from cache, and a
deleted output is rebuilt rather than trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import xarray as xr
from tiny_runs import one_thread

from layerdrift.storage import RunDir, list_results
from layerdrift.storage.results_schema import RESULT_GROUPS


def test_pipeline_runs_every_stage_then_serves_a_rerun_from_cache(tiny_run):
    from layerdrift.flows.pipeline import pipeline

    tiny_config, first = tiny_run
    assert first["checkpoints"][0] == "base" and first["checkpoints"][-1] == "final"
    assert all(state == "ran" for state in first["stages"].values()), first["stages"]
    run_dir = first["run_dir"]
    saved = json.loads(open(f"{run_dir}/config.json").read())
    assert saved["config_hash"] == tiny_config.config_hash()
    similarity = xr.open_zarr(f"{run_dir}/results.zarr", group="similarity").similarity
    assert set(similarity.checkpoint.values) == set(first["checkpoints"])

    with one_thread():  # as the first run: a rebuilt checkpoint gets the same weights
        second = pipeline(tiny_config)
    assert all(state == "cached" for state in second["stages"].values()), second["stages"]

    # A deleted checkpoint folder is rebuilt, not trusted from the cache.
    shutil.rmtree(f"{run_dir}/checkpoints/final")
    with one_thread():
        third = pipeline(tiny_config)
    assert third["stages"]["finetune"] == "ran"
    assert (Path(run_dir) / "checkpoints" / "final" / "metrics.json").is_file()
    assert third["stages"]["similarity"] == "cached"


def test_the_results_schema_declares_every_group_a_run_writes(tiny_run):
    _, outcome = tiny_run
    results = RunDir(outcome["run_dir"]).results()
    assert set(list_results(results)) == set(RESULT_GROUPS)
    tree = xr.open_datatree(results, engine="zarr")
    for name, group in RESULT_GROUPS.items():
        group.validate(tree[name].to_dataset())
        assert tree[name][name].dims == group.dims
