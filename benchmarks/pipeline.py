"""One whole run of a preset, timed per stage: where `make run`'s minutes go.

Runs ``layerdrift run --preset PRESET`` in process (the flow, with the temporary Prefect
server the command line starts) into a fresh runs folder, and records the wall time of each
stage that ran (``stage_seconds`` of the flow's result), the whole run's, the peak resident
memory and the load average before and after. Prints a table and writes
``benchmarks/results/pipeline.json`` (``pipeline-<preset>.json`` for another preset). Times
under load are pessimistic: read them with the load average printed beside them.

    .venv/bin/python benchmarks/pipeline.py [--preset default] [--config RUN.toml] [--keep DIR]

``--config`` adds a TOML file on top of the preset, as ``layerdrift run RUN.toml`` does (the
study preset with seeds: ``benchmarks/configs/study-seeds.toml``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from layerdrift.env import configure_environment  # noqa: E402

configure_environment(ROOT)  # as the command line does, before Prefect is imported

from layerdrift.config import build_config  # noqa: E402
from layerdrift.flows.interrupts import run_in_worker  # noqa: E402
from layerdrift.flows.pipeline import pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", help="quick, default or paper.")
    parser.add_argument("--config", default=None, help="A TOML file over the preset.")
    parser.add_argument("--keep", default=None, help="Runs folder to keep (default: temporary).")
    parser.add_argument("--out", default=None, help="Default: benchmarks/results/pipeline*.json")
    args = parser.parse_args(argv)
    suffix = "" if args.preset == "default" else f"-{args.preset}"
    if args.config:
        suffix += f"-{Path(args.config).stem}"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"pipeline{suffix}.json")

    with tempfile.TemporaryDirectory() as tmp:
        runs_root = args.keep or tmp
        config = build_config(args.preset, args.config, {"runs_root": runs_root})
        load_before = os.getloadavg()
        started = time.perf_counter()
        outcome = run_in_worker(pipeline, config)
        total = time.perf_counter() - started
    stages = outcome["stage_seconds"]
    summary = {
        "preset": args.preset,
        "config_file": args.config,
        "model": config.model,
        "total_seconds": total,
        "stage_seconds": stages,
        "stages": outcome["stages"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    width = max(len(name) for name in [*stages, "whole run"])
    print(f"| {'stage'.ljust(width)} | seconds | share |\n|{'-' * (width + 2)}|---------|-------|")
    for name, seconds in stages.items():
        print(f"| {name.ljust(width)} | {seconds:7.1f} | {seconds / total:5.1%} |")
    print(f"| {'whole run'.ljust(width)} | {total:7.1f} | 100%  |")
    print(f"load average before {load_before}, after {summary['load_average_after']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
