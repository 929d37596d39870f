"""Fine-tuning throughput on the bundled model: real (non-padding) tokens per second.

Fine-tunes the bundled all-MiniLM-L6-v2 on a few hundred Rotten Tomatoes snippets, times
the optimizer steps alone (forward, backward, clipping, AdamW, schedule; after a warm-up),
then the whole ``finetune()`` call (which adds evaluation and checkpoint writes). Prints a
table and writes ``benchmarks/results/finetune.json``.

    .venv/bin/python benchmarks/finetune.py [--train 480] [--steps 30] [--repeats 2]
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
from layerdrift.tasks.finetune import finetune  # noqa: E402
from layerdrift.tasks.finetune.batches import epoch_batches  # noqa: E402
from layerdrift.tasks.finetune.train import _Trainer  # noqa: E402
from layerdrift.tasks.modeling import select_device  # noqa: E402


def make_config(root: str, args: argparse.Namespace) -> RunConfig:
    data = {"dataset": "rotten-tomatoes", "train_size": args.train, "val_size": args.val,
            "probe_size": 16, "max_length": args.max_length}  # fmt: skip
    finetune_cfg = {"epochs": 1.0, "batch_size": args.batch_size, "checkpoints": [0.0, 1.0]}
    return RunConfig(name="bench", runs_root=root, model="minilm-l6", device=args.device,
                     data=data, finetune=finetune_cfg)  # fmt: skip


def time_steps(trainer: _Trainer, steps: int, warmup: int = 2) -> dict:
    """Time ``steps`` optimizer steps after ``warmup`` untimed ones."""
    cfg = trainer.cfg
    batches = epoch_batches(0, cfg.seed, trainer.lengths, cfg.finetune.batch_size)
    batches = (batches * (1 + (steps + warmup) // len(batches)))[: steps + warmup]
    for indices in batches[:warmup]:
        trainer.train_step(indices)
    real = padded = 0
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for indices in batches[warmup:]:
        trainer.train_step(indices)
        real += int(trainer.lengths[indices].sum())
        padded += len(indices) * int(trainer.lengths[indices].max())
    sync()
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "real_tokens": real, "padded_tokens": padded,
            "examples": sum(len(b) for b in batches[warmup:])}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table, write the JSON result; return the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "finetune.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        cfg = make_config(tmp, args)
        run = RunDir(cfg.run_url)
        prepare_data(run, cfg)
        trainer = _Trainer(run, cfg)
        # Best of a few repeats: other processes share these cores.
        timings = [time_steps(trainer, args.steps) for _ in range(args.repeats)]
        steps = min(timings, key=lambda t: t["seconds"] / t["real_tokens"])
        del trainer
        start = time.perf_counter()
        finetune(run, cfg)
        end_to_end = time.perf_counter() - start
        final = json.loads(Path(run.path("checkpoints", "final", "metrics.json")).read_text())
    result = {
        "model": "minilm-l6",
        "dataset": "rotten-tomatoes",
        "train_examples": args.train,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "device": str(select_device(cfg.device)),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "step_timing": steps,
        "step_timing_repeats": timings,
        "train_tokens_per_s": steps["real_tokens"] / steps["seconds"],
        "padded_tokens_per_s": steps["padded_tokens"] / steps["seconds"],
        "padding_share": 1 - steps["real_tokens"] / steps["padded_tokens"],
        "seconds_per_step": steps["seconds"] / steps["steps"],
        "finetune_call_seconds": end_to_end,
        "finetune_call_tokens_per_s": final["train_tokens"] / end_to_end,
        "final_val_accuracy": final["val_accuracy"],
    }
    rows = [
        ("train tokens/s (real, steps only)", f"{result['train_tokens_per_s']:,.0f}"),
        ("padded tokens/s (steps only)", f"{result['padded_tokens_per_s']:,.0f}"),
        ("padding share of batches", f"{result['padding_share']:.1%}"),
        ("seconds per step", f"{result['seconds_per_step']:.3f}"),
        ("finetune() wall, 1 epoch", f"{end_to_end:.1f} s"),
        ("finetune() tokens/s, load+eval+save", f"{result['finetune_call_tokens_per_s']:,.0f}"),
        ("final val accuracy (1 epoch)", f"{final['val_accuracy']:.3f}"),
        ("torch threads / load avg before", f"{result['torch_threads']} / {load_before[0]:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"minilm-l6 on {args.train} rotten-tomatoes snippets, batch {args.batch_size}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>12}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
