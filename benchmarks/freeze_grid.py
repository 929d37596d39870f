"""The freeze grid: fine-tune the bundled model with layers 0 … k frozen, for several k.

One run, the pipeline's own stage functions in order (no Prefect server): data, the full
fine-tune, extraction of base and final over a small probe set, similarity, the layer
reversion (timed), then the importance stage's freeze grid (``importance.freeze_grid = ks``:
:func:`tasks.importance.fit_variant` per k, the same code a run with that setting calls) and
its ``freeze_grid`` / ``freeze_similarity`` groups. Per k: validation accuracy and loss,
trainable parameters, fine-tuning seconds (``metrics.json``'s ``finetune_seconds``) and the
wall time of the whole k (fine-tune plus its similarity pass); ``none`` is the run's own full
fine-tune. Prints the tables and writes ``benchmarks/results/freeze_grid.json``. Times under
load are pessimistic: compare the rows of one run, and read the load average printed with
them.

    .venv/bin/python benchmarks/freeze_grid.py [--ks 0 2 4 6] [--train 2000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from layerdrift.config import RunConfig  # noqa: E402
from layerdrift.storage.rundir import RunDir  # noqa: E402
from layerdrift.tasks.data import prepare_data  # noqa: E402
from layerdrift.tasks.extract import create_store_for_run, extract_checkpoint_for_run  # noqa: E402
from layerdrift.tasks.finetune import finetune  # noqa: E402
from layerdrift.tasks.importance import (  # noqa: E402
    NONE,
    fit_variant,
    layer_reversion,
    recommend,
    write_freeze_grid,
)
from layerdrift.tasks.similarity.run import compute_similarity  # noqa: E402


def make_config(root: str, args: argparse.Namespace) -> RunConfig:
    """The grid's run: base and final checkpoints only, a freeze grid of ``args.ks``."""
    data = {"dataset": "rotten-tomatoes", "train_size": args.train, "val_size": args.val,
            "probe_size": args.probe, "max_length": args.max_length}  # fmt: skip
    finetune_cfg = {"epochs": args.epochs, "learning_rate": args.learning_rate,
                    "checkpoints": [0.0, 1.0]}  # fmt: skip
    return RunConfig(name="freeze-grid", runs_root=root, model="minilm-l6", device=args.device,
                     data=data, finetune=finetune_cfg, importance={"freeze_grid": args.ks},
                     similarity={"bootstrap_resamples": 0, "probes": False})  # fmt: skip


def timed(fn, *args) -> tuple[object, float]:
    """``fn(*args)`` and its wall seconds."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run_grid(root: str, args: argparse.Namespace) -> dict:
    """Every stage the grid needs, in pipeline order; returns the measured result."""
    cfg = make_config(root, args)
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    labels, _ = timed(finetune, run, cfg)
    create_store_for_run(run, cfg, labels)
    for label in labels:
        extract_checkpoint_for_run(run, cfg, label)
    compute_similarity(run, cfg)
    reversion, reversion_seconds = timed(layer_reversion, run, cfg)
    wall = {NONE: None}
    for k in cfg.importance.freeze_grid:
        _, wall[str(k)] = timed(fit_variant, run, cfg, k)
    grid = write_freeze_grid(run, cfg)
    rows = []
    for label in grid.freeze_k.values:
        values = grid.sel(freeze_k=label)
        row = {str(q): float(values.sel(quantity=q)) for q in grid.quantity.values}
        rows.append({"freeze_k": str(label), "wall_seconds": wall[str(label)], **row})
    accuracy = reversion.sel(quantity="accuracy").transpose("layer", "variant")
    by_grid, by_reversion = recommend(reversion, freeze_grid=grid), recommend(reversion)
    return {
        "base_accuracy": grid.attrs["base_accuracy"],
        "rows": rows,
        "reversion_seconds": reversion_seconds,
        "reversion_accuracy": {
            str(unit): dict(zip(map(str, accuracy.variant.values), values.tolist(), strict=True))
            for unit, values in zip(reversion["unit"].values, accuracy.values, strict=True)
        },
        "recommendation_freeze_grid": None if by_grid is None else list(by_grid.units),
        "recommendation_reversion": None if by_reversion is None else list(by_reversion.units),
    }


def print_result(result: dict) -> None:
    """The freeze grid and the reversion table, as terminal tables."""
    print(f"base accuracy {result['base_accuracy']:.3f}")
    print(f"{'k':>5} {'trainable':>11} {'accuracy':>9} {'loss':>7} {'finetune s':>11} "
          f"{'wall s':>7}")  # fmt: skip
    for row in result["rows"]:
        wall = "–" if row["wall_seconds"] is None else f"{row['wall_seconds']:.1f}"
        print(f"{row['freeze_k']:>5} {int(row['trainable_parameters']):>11,} "
              f"{row['accuracy']:>9.3f} {row['loss']:>7.3f} "
              f"{row['finetune_seconds']:>11.1f} {wall:>7}")  # fmt: skip
    print(f"\nlayer reversion ({result['reversion_seconds']:.1f} s), accuracy:")
    table = result["reversion_accuracy"]
    variants = list(next(iter(table.values())))
    print(f"{'unit':>10} " + " ".join(f"{v:>14}" for v in variants))
    for unit, values in table.items():
        print(f"{unit:>10} " + " ".join(f"{values[v]:>14.3f}" for v in variants))
    print(f"recommendation from the freeze grid: {result['recommendation_freeze_grid']}")
    print(f"recommendation from the reversion curves: {result['recommendation_reversion']}")


def main(argv: list[str] | None = None) -> dict:
    """Run the grid, print the tables, write the JSON result; return the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 2, 4, 6])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--probe", type=int, default=100, help="probe examples (similarity)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "freeze_grid.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="layerdrift-freeze-") as root:
        measured = run_grid(root, args)
    result = {
        "model": "minilm-l6",
        "data": {
            "train": args.train,
            "validation": args.val,
            "probe": args.probe,
            "max_length": args.max_length,
        },  # fmt: skip
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        **measured,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
    print_result(result)
    print(f"load average before {load_before}, after {result['load_average_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
