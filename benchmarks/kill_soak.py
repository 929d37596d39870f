"""Kill anywhere: SIGKILL ``layerdrift run`` at random moments, resume, compare with a clean run.

A reference run of the tiny config (2-layer BERT, separable CSV; every stage on, report
included) runs uninterrupted once and its timeline is measured from the moment its
``config.json`` appears. Each trial then starts a fresh run, SIGKILLs its process group
``kills`` times at random moments of that timeline (stratified over trials, so the kills
spread over the whole run: data, fine-tuning, store creation, extraction, results writes
and metadata consolidation, SAEs, features, report), resumes after each, lets the last
resume finish, and compares everything with the reference:

- the activation store, file by file (every chunk and coordinate; ``zarr.json`` files
  without the store's random generation id);
- every group of ``results.zarr``, value by value;
- every safetensors file (checkpoints, SAEs, crosscoders), tensor by tensor;
- ``similarity.csv``, ``features/*.json`` and the tables of ``report.html``.

Pieces finished when a kill landed (checkpoints, store chunks with their manifest entry,
results groups, SAE and crosscoder weights) must not be rewritten by the resume: their
count is reported as ``recomputed``. Prints a table and writes JSON.

    .venv/bin/python benchmarks/kill_soak.py [--trials 20] [--kills 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from factories import make_tiny_bert, separable_texts  # noqa: E402
from tiny_runs import cli_env, start_cli, tail, tiny_config, to_toml  # noqa: E402

# Marker files in pipeline order: the stage a kill landed in is the first one missing.
STAGE_MARKERS = (
    ("data", "data/dataset.json"),
    ("finetune", "checkpoints/final/metrics.json"),
    ("store creation", "activations.zarr/token_text/c/0"),
    ("extract", "activations.zarr/written/c/2/*"),
    ("similarity", "similarity.csv"),
    ("sae", "saes/final/layer-1/cfg.json"),
    ("sae metrics", "results.zarr/sae_metrics/zarr.json"),
    ("features", "features/cards.json"),
    ("report", "report.html"),
)
GENERATION = re.compile(r'"(store_)?generation": "[0-9a-f]*"')


def _config(work: Path) -> Path:
    """Write the tiny model, its CSV and the run's TOML into ``work``; return the TOML."""
    model = make_tiny_bert(work / "tiny-bert")
    csv = work / "texts.csv"
    separable_texts(600).to_csv(csv, index=False)
    config = tiny_config(
        model,
        csv,
        extract={"token_chunk": 64},
        sae={"layers": [1], "token_budget": 4096, "checkpoint_every": 4},
    )
    toml = work / "tiny.toml"
    toml.write_text(to_toml(config))
    return toml


def _run(work: Path, name: str, kill_after: list[float], **env: str) -> dict:
    """Run ``name``, SIGKILLing it ``len(kill_after)`` times (seconds after its config.json
    appears), resuming after each; return the timeline and what each kill found finished.

    ``env`` adds variables to the runs' environment (``PREFECT_API_URL`` of a server to use
    instead of a temporary one per run)."""
    run = work / "runs" / name
    args = ["run", str(work / "tiny.toml"), "--runs-root", str(work / "runs"), "--name", name]
    env, log = cli_env(work / f"prefect-{name}", **env), work / f"{name}.log"
    kills = []
    for delay in [*kill_after, None]:
        process = start_cli(args, work, env, log)
        origin = _wait_for_config(process, run)
        if delay is None:
            code = process.wait(timeout=1800)
            if code != 0:
                raise RuntimeError(f"{name} failed ({code}):\n{tail(log)}")
            return {"seconds_after_config": time.monotonic() - origin, "kills": kills}
        while time.monotonic() < origin + delay and process.poll() is None:
            time.sleep(0.005)
        if process.poll() is not None:  # finished before the kill was due
            kills.append({"at_s": delay, "landed": False})
            return {"seconds_after_config": time.monotonic() - origin, "kills": kills}
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kills.append(
            {"at_s": delay, "landed": True, "stage": _stage(run), "finished": _pieces(run)}
        )
    raise AssertionError("unreachable")


def _wait_for_config(process, run: Path) -> float:
    """When the run's config.json appeared (now, if it was there already)."""
    while not (run / "config.json").exists():
        if process.poll() is not None:
            raise RuntimeError(f"the run ended before writing config.json ({process.returncode})")
        time.sleep(0.005)
    return time.monotonic()


def _stage(run: Path) -> str:
    for stage, marker in STAGE_MARKERS:
        if not any(run.glob(marker)):
            return stage
    return "after the report"


def _mtimes(run: Path, *patterns: str) -> dict[str, int]:
    found = {}
    for pattern in patterns:
        for path in run.glob(pattern):
            if path.is_file():
                found[str(path.relative_to(run))] = path.stat().st_mtime_ns
    return found


def _pieces(run: Path) -> dict[str, int]:
    """mtimes of the pieces complete now (a resume must not rewrite them)."""
    manifest = _mtimes(run, "activations.zarr/written/c/**/*")
    pieces = dict(manifest)
    for path, mtime in _mtimes(run, "activations.zarr/activations/c/**/*").items():
        checkpoint, _layer, chunk = path.split("/")[-4:-1]
        if f"activations.zarr/written/c/{checkpoint}/{chunk}" in manifest:
            pieces[path] = mtime
    for metrics in run.glob("checkpoints/*/metrics.json"):
        pieces |= _mtimes(run, f"checkpoints/{metrics.parent.name}/*.safetensors")
    for cfg in [*run.glob("saes/*/layer-*/cfg.json"), *run.glob("crosscoders/layer-*/cfg.json")]:
        pieces |= _mtimes(run, str(cfg.parent.relative_to(run) / "*.safetensors"))
    return pieces


def _store_files(run: Path) -> dict[str, bytes]:
    files = {}
    stores = [run / "activations.zarr", run / "random.zarr"]  # the floor's, when written
    for path in sorted(p for store in stores if store.exists() for p in store.rglob("*")):
        if path.is_file() and not path.name.startswith("writer.lock"):  # leases, not data
            data = path.read_bytes()
            if path.name == "zarr.json":
                data = GENERATION.sub('"generation": ""', data.decode()).encode()
            files[str(path.relative_to(run))] = data
    return files


def _differences(reference: Path, resumed: Path) -> list[str]:
    """Everything in which ``resumed`` differs from ``reference`` (empty: identical)."""
    diffs = []
    ref_store, got_store = _store_files(reference), _store_files(resumed)
    if set(ref_store) != set(got_store):
        diffs.append(f"store files differ: {sorted(set(ref_store) ^ set(got_store))[:5]}")
    diffs += [f"store {k}" for k in ref_store if k in got_store and ref_store[k] != got_store[k]]
    groups = sorted(p.name for p in (reference / "results.zarr").iterdir() if p.is_dir())
    got_groups = sorted(p.name for p in (resumed / "results.zarr").iterdir() if p.is_dir())
    if groups != got_groups:
        diffs.append(f"results groups differ: {sorted(set(groups) ^ set(got_groups))}")
    for group in set(groups) & set(got_groups):
        ref, got = (_result_group(run, group) for run in (reference, resumed))
        if not ref.identical(got):
            diffs.append(f"results {group}")
    for path in sorted(reference.rglob("*.safetensors")):
        relative = path.relative_to(reference)
        if "train-state" in relative.parts or ".train-state" in relative.parts:
            continue
        other = resumed / relative
        if not other.exists():
            diffs.append(f"missing {relative}")
            continue
        ref, got = load_file(path), load_file(other)
        if set(ref) != set(got) or any(not np.array_equal(ref[k], got[k]) for k in ref):
            diffs.append(f"weights {relative}")
    features = [f"features/{p.name}" for p in sorted((reference / "features").glob("*.json"))]
    for name in ("similarity.csv", *features):
        texts = [GENERATION.sub("", (run / name).read_text()) for run in (reference, resumed)]
        if texts[0] != texts[1]:
            diffs.append(name)
    if _tables(reference) != _tables(resumed):
        diffs.append("report.html tables")
    return diffs


def _result_group(run: Path, group: str) -> xr.Dataset:
    """One results group in memory, without the store generation ids (random per store: the
    activation store's and the random reference's)."""
    dataset = xr.open_zarr(run / "results.zarr", group=group, consolidated=False).load()
    for variable in [dataset, *dataset.variables.values()]:
        variable.attrs.pop("store_generation", None)
        variable.attrs.pop("random_generation", None)
    return dataset


def _tables(run: Path) -> list[str]:
    html = (run / "report.html").read_text().replace(str(run), "<run>")
    return re.findall(r"<table.*?</table>", html, flags=re.S)


def trial(work: Path, name: str, kill_after: list[float], reference: Path) -> dict:
    """One run killed at ``kill_after``, resumed, then compared with ``reference``."""
    outcome = _run(work, name, kill_after)
    run = work / "runs" / name
    final = _mtimes(run, "**/*")
    for kill in outcome["kills"]:
        finished = kill.pop("finished", {})
        kill["finished"] = len(finished)
        kill["recomputed"] = sorted(p for p, mtime in finished.items() if final.get(p) != mtime)
    differences = _differences(reference, run)
    return {"name": name, **outcome, "identical": not differences, "differences": differences}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kills", type=int, default=1, help="kills per trial, then a finish")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/kill_soak.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    _config(work)
    started = time.monotonic()
    reference = _run(work, "reference", [])
    span = reference["seconds_after_config"]
    rng = random.Random(args.seed)
    trials = []
    for index in range(args.trials):
        # Moments as fractions of the run: stratified, trial i kills inside the i-th slice.
        low, high = index / args.trials, (index + 1) / args.trials
        if args.kills > 1:
            low, high = 0.0, 1.0
        fractions = sorted(rng.uniform(low, high) for _ in range(args.kills))
        result, span = _landed_trial(work, index, fractions, span)
        trials.append(result)
        kills = ", ".join(f"{k['at_s']:.1f}s/{k.get('stage', 'missed')}" for k in result["kills"])
        verdict = "identical" if result["identical"] else f"DIFFERS {result['differences'][:3]}"
        print(f"trial {index:2d}: killed at {kills}: {verdict}", flush=True)
    report = _summary(trials, span, time.monotonic() - started, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(
        f"\n{report['identical']}/{report['trials']} identical; kills landed in: {report['stages']}"
    )
    print(f"finished pieces recomputed after a kill: {report['recomputed']}; wrote {args.out}")


def _landed_trial(work: Path, index: int, fractions: list[float], span: float) -> tuple:
    """Trial ``index`` with kills at ``fractions`` of a run lasting ``span`` seconds after its
    config.json. The machine's load changes how long a run takes: when the run ends before
    a kill was due, ``span`` becomes the length just seen and the trial is run again."""
    for attempt in range(4):
        moments = [fraction * span * 0.95 for fraction in fractions]
        delays = [b - a for a, b in zip([0.0, *moments], moments, strict=False)]
        name = f"trial-{index:02d}" + (f"-{attempt}" if attempt else "")
        result = trial(work, name, delays, work / "runs" / "reference")
        if all(kill["landed"] for kill in result["kills"]) or attempt == 3:
            return result, span
        span = result["seconds_after_config"]
        shutil.rmtree(work / "runs" / name)
    raise AssertionError("unreachable")


def _summary(trials: list[dict], span: float, seconds: float, args) -> dict:
    landed = [k for t in trials for k in t["kills"] if k["landed"]]
    stages: dict[str, int] = {}
    for kill in landed:
        stages[kill["stage"]] = stages.get(kill["stage"], 0) + 1
    return {
        "trials": len(trials),
        "kills_per_trial": args.kills,
        "seed": args.seed,
        "identical": sum(t["identical"] for t in trials),
        "kills_landed": len(landed),
        "stages": stages,
        "recomputed": sum(len(k["recomputed"]) for k in landed),
        "reference_seconds_after_config": round(span, 1),
        "total_seconds": round(seconds, 1),
        "load_average": os.getloadavg(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "results": trials,
    }


if __name__ == "__main__":
    main()
