"""The pipeline flow on a tiny model: every stage runs, a rerun reuses finished stages from
their files (unpickling nothing, even a result planted where Prefect kept its cache), a
deleted output is rebuilt rather than trusted, and chunks that verify --repair cleared are
extracted again, alone."""

from __future__ import annotations

import base64
import inspect
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import xarray as xr
from tiny_runs import one_thread

from layerdrift.config import RunConfig
from layerdrift.storage import RunDir, list_results
from layerdrift.storage.results_schema import RESULT_GROUPS

# Audit events of the rerun below: every global an unpickler resolved, as "module.name".
UNPICKLED: list[str] = []
_AUDITING = {"on": False}


def _audit(event: str, args: tuple) -> None:
    if _AUDITING["on"] and event == "pickle.find_class":
        UNPICKLED.append(f"{args[0]}.{args[1]}")


sys.addaudithook(_audit)


class _Exploit:
    """A pickle that, when loaded, creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_pickles(run_dir: Path, config: RunConfig, marker: Path) -> list[Path]:
    """Prefect result records whose payload is :class:`_Exploit`, under the names the stages'
    results had when they were cached with ``INPUTS + TASK_SOURCE`` in ``.prefect-results``."""
    import cloudpickle
    from prefect.cache_policies import INPUTS, TASK_SOURCE

    from layerdrift.storage import RunDir
    from layerdrift.tasks.data import prepare_data_task
    from layerdrift.tasks.finetune import finetune_task
    from layerdrift.tasks.sae import evaluate_saes_task
    from layerdrift.tasks.similarity.run import compute_similarity_task

    folder = run_dir / ".prefect-results"
    folder.mkdir(exist_ok=True)
    payload = base64.b64encode(cloudpickle.dumps(_Exploit(marker))).decode()
    planted = []
    for stage in (prepare_data_task, finetune_task, compute_similarity_task, evaluate_saes_task):
        inputs = inspect.signature(stage.fn).bind(RunDir(str(run_dir)), config).arguments
        key = (INPUTS + TASK_SOURCE).compute_key(
            task_ctx=SimpleNamespace(task=stage), inputs=dict(inputs), flow_parameters={}
        )
        serializer = {"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None}
        metadata = {"storage_key": str(folder / key), "expiration": None, "serializer": serializer}
        record = {"metadata": {**metadata, "storage_block_id": None}, "result": payload}
        (folder / key).write_text(json.dumps(record))
        planted.append(folder / key)
    return planted


def test_pipeline_runs_every_stage_then_reuses_them_from_disk(tiny_run, tmp_path):
    from layerdrift.flows.pipeline import pipeline

    tiny_config, first = tiny_run
    assert first["checkpoints"][0] == "base" and first["checkpoints"][-1] == "final"
    assert all(state == "ran" for state in first["stages"].values()), first["stages"]
    assert set(first["stage_seconds"]) == {*first["stages"], "report"}
    assert all(seconds > 0 for seconds in first["stage_seconds"].values())
    run_dir = first["run_dir"]
    saved = json.loads(open(f"{run_dir}/config.json").read())
    assert saved["config_hash"] == tiny_config.config_hash()
    similarity = xr.open_zarr(f"{run_dir}/results.zarr", group="similarity").similarity
    assert set(similarity.checkpoint.values) == set(first["checkpoints"])
    assert not (Path(run_dir) / ".prefect-results").exists()

    marker = tmp_path / "pickle-was-loaded"
    assert _plant_pickles(Path(run_dir), tiny_config, marker)
    _AUDITING["on"] = True
    try:
        with one_thread():  # as the first run: a rebuilt checkpoint gets the same weights
            second = pipeline(tiny_config)
    finally:
        _AUDITING["on"] = False
    assert all(state == "cached" for state in second["stages"].values()), second["stages"]
    assert set(second["stage_seconds"]) == {"report"}  # nothing else ran
    assert second["checkpoints"] == first["checkpoints"]
    assert not marker.exists(), "a planted pickle was loaded"
    # Dask copies its own in-memory task graphs through pickle; nothing else may unpickle.
    loaded = sorted({name for name in UNPICKLED if not name.startswith("dask.")})
    assert loaded == [], f"the rerun unpickled {loaded}"

    # A deleted checkpoint folder is rebuilt, not trusted.
    shutil.rmtree(f"{run_dir}/checkpoints/final")
    with one_thread():
        third = pipeline(tiny_config)
    assert third["stages"]["finetune"] == "ran"
    assert (Path(run_dir) / "checkpoints" / "final" / "metrics.json").is_file()
    assert third["stages"]["similarity"] == "cached"

    # A lost and a flipped chunk: verify --repair clears them, the next run redoes only those.
    from layerdrift.flows.status import run_status, verify_run

    store = Path(run_dir) / "activations.zarr" / "activations" / "c"
    lost, flipped = store / "1" / "1" / "0" / "0", store / "2" / "0" / "1" / "0"
    originals = {path: path.read_bytes() for path in (lost, flipped)}
    lost.unlink()
    flipped.write_bytes(
        originals[flipped][:9] + bytes([originals[flipped][9] ^ 1]) + originals[flipped][10:]
    )
    states = {(stage, piece): state for stage, piece, state in run_status(run_dir)}
    assert states[("extract", "step-000005")].startswith("incomplete: 1 written chunk missing")
    assert states[("extract", "final")] == "complete"  # the flip needs the checksum: verify
    damage, repaired = verify_run(run_dir)
    assert {d.chunk[:3] for d in damage} == {(1, 1, 0), (2, 0, 1)} and repaired == []
    damage, repaired = verify_run(run_dir, repair=True)
    assert len(repaired) == 2
    untouched = {
        path: path.stat().st_mtime_ns
        for path in store.glob("*/*/*/0")
        if (path.parts[-4], path.parts[-2]) not in {("1", "0"), ("2", "1")}
    }
    with one_thread():
        fourth = pipeline(tiny_config)
    ran = sorted(stage for stage, state in fourth["stages"].items() if state == "ran")
    assert ran == ["extract:final", "extract:step-000005"], fourth["stages"]
    assert {path: path.read_bytes() for path in originals} == originals
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched
    assert verify_run(run_dir) == ([], [])


def test_the_results_schema_declares_every_group_a_run_writes(tiny_run):
    _, outcome = tiny_run
    results = RunDir(outcome["run_dir"]).results()
    # The freeze grid's groups need importance.freeze_grid (test_freeze_grid.py checks them),
    # the cross-task ones [[tasks]] (test_study.py).
    elsewhere = {"freeze_grid", "freeze_similarity", "cross_similarity", "cross_similarity_ci",
                 "task_features", "task_reversion", "task_drift_importance"}  # fmt: skip
    expected = set(RESULT_GROUPS) - elsewhere
    assert set(list_results(results)) == expected
    tree = xr.open_datatree(results, engine="zarr")
    for name in expected:
        group = RESULT_GROUPS[name]
        group.validate(tree[name].to_dataset())
        assert tree[name][name].dims == group.dims
