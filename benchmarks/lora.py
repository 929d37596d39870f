"""LoRA against full fine-tuning on the bundled model, at the quick preset's size.

One data split (the quick preset's: 600 training, 200 validation snippets of Rotten
Tomatoes, 64 tokens, 2 epochs of batch 16), fine-tuned once per method one after the other
in this process: validation accuracy and loss at base and final, trainable parameters, and
the seconds of the whole ``finetune()`` call (training, evaluation, checkpoint writes), with
the load average before and after each run. Prints a table and writes
``benchmarks/results/lora.json``.

    .venv/bin/python benchmarks/lora.py [--lora-learning-rate 1e-3 ...] [--device cpu]

Each ``--lora-learning-rate`` adds a LoRA run at that rate (LoRA is usually trained at a
higher rate than full fine-tuning); the first LoRA run uses the preset's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from layerdrift.config import build_config  # noqa: E402
from layerdrift.storage.checkpoints import read_checkpoint_metrics  # noqa: E402
from layerdrift.storage.rundir import RunDir  # noqa: E402
from layerdrift.tasks.data import prepare_data  # noqa: E402
from layerdrift.tasks.finetune import finetune  # noqa: E402


def one_run(root: Path, data_run: RunDir, name: str, finetune_cfg: dict, device: str) -> dict:
    """Fine-tune one method on the shared split; its row of the table."""
    cfg = build_config(
        "quick", overrides={"name": name, "runs_root": str(root), "device": device,
                            "finetune": finetune_cfg},
    )  # fmt: skip
    run = RunDir(cfg.run_url)
    shutil.copytree(data_run.path("data"), run.path("data"))  # the same split for every run
    load_before = os.getloadavg()
    start = time.perf_counter()
    finetune(run, cfg)
    seconds = time.perf_counter() - start
    base, final = (read_checkpoint_metrics(run, label) for label in ("base", "final"))
    return {
        "method": cfg.finetune.method,
        "learning_rate": cfg.finetune.learning_rate,
        "lora_rank": final.get("lora_rank"),
        "trainable_parameters": final["trainable_parameters"],
        "total_parameters": final["total_parameters"],
        "steps": final["step"],
        "val_accuracy_base": base["val_accuracy"],
        "val_accuracy": final["val_accuracy"],
        "val_loss": final["val_loss"],
        "finetune_seconds": round(seconds, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lora-learning-rate", type=float, action="append", default=[])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="layerdrift-lora-") as tmp:
        root = Path(tmp)
        shared = build_config("quick", overrides={"name": "data", "runs_root": str(root)})
        data_run = RunDir(shared.run_url)
        prepare_data(data_run, shared)
        lora = {"method": "lora", "lora": {"rank": args.rank}}
        plans = [("full", {}), ("lora", lora)]
        plans += [(f"lora-lr{rate:g}", {**lora, "learning_rate": rate})
                  for rate in args.lora_learning_rate]  # fmt: skip
        rows = []
        for name, finetune_cfg in plans:
            rows.append(one_run(root, data_run, name, finetune_cfg, args.device))
            print(f"{name}: {rows[-1]}", flush=True)

    print(f"\n{'method':<6} {'lr':>8} {'trainable':>12} {'acc base':>9} {'acc':>6} "
          f"{'loss':>6} {'seconds':>8} {'load (1 min)':>13}")  # fmt: skip
    for row in rows:
        cells = [
            f"{row['method']:<6}", f"{row['learning_rate']:>8.0e}",
            f"{row['trainable_parameters']:>12,}", f"{row['val_accuracy_base']:>9.3f}",
            f"{row['val_accuracy']:>6.3f}", f"{row['val_loss']:>6.3f}",
            f"{row['finetune_seconds']:>8.1f}", f"{row['load_average_before'][0]:>13.1f}",
        ]  # fmt: skip
        print(" ".join(cells))
    result = {
        "benchmark": "lora",
        "preset": "quick",
        "model": "minilm-l6",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "note": "runs one after the other on shared cores: compare the rows, not the seconds",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
