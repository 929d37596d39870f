"""What the similarity floor (``similarity.random_floor``) costs on a finished run.

On a copy of a run (e.g. ``layerdrift run --preset quick``; the copy links its checkpoints,
data and activation store), timed side by side in one process: building the random model
and extracting the probe set through it (``extract:random``), one ordinary checkpoint's
extraction into a fresh store (what ``extract:<label>`` costs), and the similarity stage
without and with the random reference (the run's own bootstrap settings, probes off: they
do not change with the floor).

Usage: ``.venv/bin/python benchmarks/random_floor.py runs/quick``.
Prints a table and writes ``benchmarks/results/random_floor.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from layerdrift.config import RunConfig, load_run_config
from layerdrift.storage import RunDir
from layerdrift.storage.checkpoints import local_checkpoint_path
from layerdrift.tasks.extract import create_activation_store, extract_checkpoint
from layerdrift.tasks.extract.prefect_tasks import extract_random_for_run
from layerdrift.tasks.modeling import load_tokenizer
from layerdrift.tasks.similarity.run import compute_similarity

ROOT = Path(__file__).resolve().parents[1]


def copy_run(run: Path, into: Path) -> RunDir:
    """A run folder linking ``run``'s inputs and activation store, without results."""
    into.mkdir(parents=True)
    for name in ("config.json", "data", "checkpoints", "activations.zarr"):
        (into / name).symlink_to((run / name).resolve())
    return RunDir(str(into))


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def one_extraction(run: RunDir, cfg: RunConfig, label: str, into: Path) -> float:
    """Seconds to create a store of ``label`` alone and fill it (one ``extract:<label>``)."""
    import xarray as xr

    folder = local_checkpoint_path(run, label)
    probe = xr.open_zarr(run.activations())
    url = str(into / "one.zarr")
    start = time.perf_counter()
    create_activation_store(
        url,
        [str(t) for t in probe["text"].values],
        [int(v) for v in probe["label"].values],
        load_tokenizer(str(folder)),
        {label: folder},
        max_length=cfg.data.max_length,
        token_chunk=cfg.extract.token_chunk,
        dtype=cfg.extract.dtype,
    )
    extract_checkpoint(url, label, folder, batch_size=cfg.extract.batch_size, device="cpu")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    load = os.getloadavg()
    source = RunDir(str(args.run))
    base_cfg = load_run_config(source.read_text("config.json"))
    with tempfile.TemporaryDirectory() as tmp:
        run = copy_run(args.run, Path(tmp) / "run")
        cfg = base_cfg
        rows = {
            "extract_random_s": timed(extract_random_for_run, run, cfg),
            "extract_one_checkpoint_s": one_extraction(run, cfg, "final", Path(tmp)),
        }
        for floor in (False, True):
            update = {"probes": False, "random_floor": floor}
            section = base_cfg.similarity.model_copy(update=update)
            cfg = base_cfg.model_copy(update={"similarity": section})
            rows[f"similarity_floor_{str(floor).lower()}_s"] = timed(compute_similarity, run, cfg)
    rows = {k: round(v, 1) for k, v in rows.items()}
    result = {
        "run": str(args.run),
        "threads": torch.get_num_threads(),
        "bootstrap_resamples": base_cfg.similarity.bootstrap_resamples,
        "load_average_before": [round(v, 2) for v in load],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        **rows,
        "similarity_ratio_with_floor": round(
            rows["similarity_floor_true_s"] / rows["similarity_floor_false_s"], 2
        ),
    }
    print(f"{'measure':<32} seconds")
    for key, value in rows.items():
        print(f"{key:<32} {value}")
    print(f"similarity with / without floor: {result['similarity_ratio_with_floor']}x")
    out = ROOT / "benchmarks" / "results" / "random_floor.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
