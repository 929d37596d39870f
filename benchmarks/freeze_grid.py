"""The freeze grid: fine-tune the bundled model with layers 0 … k frozen, for several k.

Each k is its own run sharing one data split (same seed, same sizes): ``finetune.freeze_layers
= k`` freezes the embeddings and the first k blocks; ``full`` freezes nothing. For each:
final validation accuracy (from the final checkpoint's ``metrics.json``), trainable
parameters, and the wall time of the ``finetune()`` call. The unfrozen run also gets the
importance stage's ``layer_reversion`` (accuracy per unit and variant, and its time), so
the freeze curve and the reversion curve come from one split. Prints the tables and writes
``benchmarks/results/freeze_grid.json``. Times under load are pessimistic: compare the rows
of one run, and read the load average printed with them.

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
from layerdrift.storage.checkpoints import read_checkpoint_metrics  # noqa: E402
from layerdrift.storage.rundir import RunDir  # noqa: E402
from layerdrift.tasks.data import prepare_data  # noqa: E402
from layerdrift.tasks.finetune import finetune  # noqa: E402
from layerdrift.tasks.importance import layer_reversion, recommend  # noqa: E402


def make_config(root: str, k: int | None, args: argparse.Namespace) -> RunConfig:
    """One run of the grid: the default preset's data and schedule, ``freeze_layers = k``."""
    name = "full" if k is None else f"freeze-{k}"
    data = {"dataset": "rotten-tomatoes", "train_size": args.train, "val_size": args.val,
            "probe_size": 16, "max_length": args.max_length}  # fmt: skip
    finetune_cfg = {"epochs": args.epochs, "learning_rate": args.learning_rate,
                    "checkpoints": [0.0, 1.0], "freeze_layers": k}  # fmt: skip
    return RunConfig(name=name, runs_root=root, model="minilm-l6", device=args.device,
                     data=data, finetune=finetune_cfg)  # fmt: skip


def one_run(root: str, k: int | None, args: argparse.Namespace) -> dict:
    """Prepare the data, fine-tune with layers 0 … k frozen, return the row."""
    cfg = make_config(root, k, args)
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    start = time.perf_counter()
    finetune(run, cfg)
    seconds = time.perf_counter() - start
    final, base = read_checkpoint_metrics(run, "final"), read_checkpoint_metrics(run, "base")
    row = {
        "freeze_layers": k,
        "frozen_layers": final["frozen_layers"],
        "trainable_parameters": final["trainable_parameters"],
        "total_parameters": final["total_parameters"],
        "base_accuracy": base["val_accuracy"],
        "val_accuracy": final["val_accuracy"],
        "val_loss": final["val_loss"],
        "finetune_seconds": seconds,
    }
    if k is None:
        start = time.perf_counter()
        array = layer_reversion(run, cfg)
        row["reversion_seconds"] = time.perf_counter() - start
        accuracy = array.sel(quantity="accuracy").transpose("layer", "variant")
        row["reversion_accuracy"] = {
            str(unit): dict(zip(map(str, accuracy.variant.values), values.tolist(), strict=True))
            for unit, values in zip(array["unit"].values, accuracy.values, strict=True)
        }
        found = recommend(array)
        row["recommendation"] = None if found is None else list(found.units)
    return row


def main(argv: list[str] | None = None) -> dict:
    """Run the grid, print a table, write the JSON result; return the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 2, 4, 6])
    parser.add_argument("--no-full", action="store_true", help="skip the unfrozen baseline")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "freeze_grid.json"))
    args = parser.parse_args(argv)
    grid = ([] if args.no_full else [None]) + list(args.ks)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="layerdrift-freeze-") as root:
        rows = [one_run(root, k, args) for k in grid]
    result = {
        "model": "minilm-l6",
        "data": {"train": args.train, "validation": args.val, "max_length": args.max_length},
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "rows": rows,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
    print(f"{'k':>5} {'trainable':>11} {'accuracy':>9} {'loss':>7} {'seconds':>8}")
    for row in rows:
        k = "full" if row["freeze_layers"] is None else row["freeze_layers"]
        print(f"{k!s:>5} {row['trainable_parameters']:>11,} {row['val_accuracy']:>9.3f} "
              f"{row['val_loss']:>7.3f} {row['finetune_seconds']:>8.1f}")  # fmt: skip
    for row in rows:
        if "reversion_accuracy" in row:
            print(f"\nlayer reversion (unfrozen run, {row['reversion_seconds']:.1f} s), accuracy:")
            table = row["reversion_accuracy"]
            variants = list(next(iter(table.values())))
            print(f"{'unit':>10} " + " ".join(f"{v:>14}" for v in variants))
            for unit, values in table.items():
                print(f"{unit:>10} " + " ".join(f"{values[v]:>14.3f}" for v in variants))
            print(f"recommendation: {row['recommendation']}")
    print(f"load average before {load_before}, after {result['load_average_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
