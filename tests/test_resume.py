"""Crash-safe resume of the whole pipeline, proven by fault injection.

``layerdrift run`` (tiny config) is SIGKILLed during fine-tuning, extraction, similarity and
SAE training, then rerun; meanwhile an uninterrupted run of the same config runs beside it.
The killed-and-resumed run must end with a byte-identical activation store, equal results and
SAE weights, and must not rewrite any piece that was complete when it was killed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from factories import separable_texts
from safetensors.numpy import load_file
from tiny_runs import cli_env, start_cli, tail, tiny_config, to_toml, wait_until

KILL_POINTS = {
    # stage: (trigger glob that says the stage is under way, glob that says it is over)
    "finetune": ("checkpoints/step-*/metrics.json", "checkpoints/final/metrics.json"),
    "extract": ("activations.zarr/written/c/1/2", "activations.zarr/written/c/2/0"),
    "similarity": ("results.zarr/*", "results.zarr/similarity/zarr.json"),
    "sae": ("saes/final/layer-1/train-state/state.json", "saes/final/layer-1/cfg.json"),
}
STORE_CHUNKS = ("activations.zarr/activations/c/**/*", "activations.zarr/written/c/**/*")


def _files(run: Path, *patterns: str) -> dict[str, int]:
    """Relative path -> mtime (ns) of the files matching ``patterns`` under ``run``."""
    found = {}
    for pattern in patterns:
        for path in run.glob(pattern):
            # Zarr's local store writes a chunk to ``<key>.<uuid>.partial`` and renames it;
            # a kill between the two leaves that temporary file (the next extraction removes
            # it), never read as a chunk.
            if path.is_file() and path.suffix != ".partial":
                found[str(path.relative_to(run))] = path.stat().st_mtime_ns
    return found


def _finished_pieces(run: Path) -> dict[str, int]:
    """mtimes of every piece that is complete now: checkpoints, store chunks, results, SAEs."""
    # A store chunk is finished once its manifest entry is set; data written by a process
    # killed before that is rightly written again.
    manifest = _files(run, STORE_CHUNKS[1])
    pieces = dict(manifest)
    for path, mtime in _files(run, STORE_CHUNKS[0]).items():
        checkpoint, _layer, chunk = path.split("/")[-4:-1]
        if f"activations.zarr/written/c/{checkpoint}/{chunk}" in manifest:
            pieces[path] = mtime
    for metrics in run.glob("checkpoints/*/metrics.json"):
        pieces |= _files(run, f"checkpoints/{metrics.parent.name}/*")
    if (run / "results.zarr/similarity/zarr.json").exists():
        pieces |= _files(run, "results.zarr/similarity/**/*", "results.zarr/drift/**/*")
    for cfg in run.glob("saes/*/layer-*/cfg.json"):
        pieces |= _files(run, str(cfg.parent.relative_to(run) / "*.safetensors"))
    return pieces


def _kill_when(process, run: Path, trigger: str, log: Path) -> None:
    """SIGKILL the process group as soon as a file matching ``trigger`` exists."""
    wait_until(process, lambda: any(run.glob(trigger)), trigger, log, timeout_s=300, poll_s=0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory, tiny_model_dir, prefect_api_url) -> dict:
    """One uninterrupted run and one run killed at every point of KILL_POINTS, then finished."""
    work = tmp_path_factory.mktemp("resume")
    csv = work / "texts.csv"
    separable_texts(1200).to_csv(csv, index=False)
    config = tiny_config(
        tiny_model_dir,
        csv,
        data={"train_size": 480, "probe_size": 120},
        extract={"token_chunk": 64},
        sae={"layers": [1], "token_budget": 8192, "checkpoint_every": 4},
        report={"enabled": False},
    )
    (work / "tiny.toml").write_text(to_toml(config))

    def start(kind: str):
        args = ["run", "tiny.toml", "--runs-root", str(work / kind)]
        env = cli_env(work / f"prefect-{kind}", PREFECT_API_URL=prefect_api_url)
        return start_cli(args, work, env, work / f"{kind}.log")

    reference = start("reference")
    run = work / "resumed" / "tiny"
    kills = {}
    try:
        for stage, (trigger, over) in KILL_POINTS.items():
            started = time.monotonic()
            _kill_when(start("resumed"), run, trigger, work / "resumed.log")
            kills[stage] = {
                "landed_in_stage": not any(run.glob(over)),
                "finished": _finished_pieces(run),
                "seconds": time.monotonic() - started,
            }
        final = start("resumed")
        assert final.wait(timeout=600) == 0, tail(work / "resumed.log")
        assert reference.wait(timeout=600) == 0, tail(work / "reference.log")
    finally:
        for process in (reference,):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return {"reference": work / "reference" / "tiny", "resumed": run, "kills": kills}


def test_every_kill_landed_inside_its_stage(resume_runs):
    for stage, kill in resume_runs["kills"].items():
        assert kill["landed_in_stage"], f"the kill meant for {stage} came after it finished"


def test_activation_store_is_byte_identical(resume_runs):
    reference, resumed = resume_runs["reference"], resume_runs["resumed"]
    chunks = sorted(_files(reference, *STORE_CHUNKS))
    assert len(chunks) > 20
    assert sorted(_files(resumed, *STORE_CHUNKS)) == chunks
    for chunk in chunks:
        assert (resumed / chunk).read_bytes() == (reference / chunk).read_bytes(), chunk
    # A kill mid-write leaves a temporary file; the resumed extraction removed it.
    assert not list((resumed / "activations.zarr").rglob("*.partial"))


def test_results_and_sae_weights_match(resume_runs):
    reference, resumed = resume_runs["reference"], resume_runs["resumed"]
    groups = sorted(p.name for p in (reference / "results.zarr").iterdir() if p.is_dir())
    assert {"similarity", "drift", "probe_accuracy", "sae_metrics"} <= set(groups)
    for group in groups:
        ref = xr.open_zarr(reference / "results.zarr", group=group, consolidated=False)
        got = xr.open_zarr(resumed / "results.zarr", group=group, consolidated=False)
        assert set(got.data_vars) == set(ref.data_vars), group
        for name, expected in ref.data_vars.items():
            if expected.dtype.kind in "fc":
                np.testing.assert_allclose(
                    got[name].values, expected.values, rtol=1e-5, atol=1e-6, err_msg=group
                )
            else:
                np.testing.assert_array_equal(got[name].values, expected.values, err_msg=group)
    weights = sorted(reference.glob("saes/*/layer-*/sae_weights.safetensors"))
    assert len(weights) == 2
    for path in weights:
        expected = load_file(path)
        got = load_file(resumed / path.relative_to(reference))
        assert set(got) == set(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_finished_pieces_are_not_recomputed(resume_runs):
    resumed = resume_runs["resumed"]
    final = _files(resumed, "**/*")
    kills = resume_runs["kills"]
    for stage, kill in kills.items():
        rewritten = [p for p, mtime in kill["finished"].items() if final.get(p) != mtime]
        assert not rewritten, f"pieces finished before the {stage} kill were rewritten: {rewritten}"
    # Every kill found more finished pieces than the one before it.
    counts = [len(kill["finished"]) for kill in kills.values()]
    print("pieces finished at each kill:", dict(zip(kills, counts, strict=True)))
    assert counts == sorted(counts) and counts[0] > 0, counts
    assert not (resumed / "saes/final/layer-1/train-state").exists()
