"""Base vs fine-tuned features on the bundled model: the per-layer table of issue 6.

Prepares a run stage by stage with the plain stage functions (data, fine-tuning with only
the base and final checkpoints kept, extraction of those two, SAEs of every layer for both),
then times :func:`tasks.features.run.compare_features_for_run` per layer (crosscoder
training + scan + matching + cards) and prints the table: crosscoder group counts, matched
fraction, task-specific fractions, transfer FVU. Writes ``benchmarks/results/features.json``.
Every stage resumes, so a second call only re-prints.

    .venv/bin/python benchmarks/features.py [--preset default] [--runs-root /tmp/ld-bench]
    .venv/bin/python benchmarks/features.py --existing-run runs/default   # store + SAEs done
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from layerdrift.config import build_config, load_run_config  # noqa: E402
from layerdrift.storage.activations import missing_chunks, open_store  # noqa: E402
from layerdrift.storage.rundir import RunDir, save_run_config  # noqa: E402
from layerdrift.tasks.data import data_complete, prepare_data  # noqa: E402
from layerdrift.tasks.extract import create_store_for_run, extract_checkpoint_for_run  # noqa: E402
from layerdrift.tasks.features.run import (  # noqa: E402
    compare_features_for_run,
    feature_layers,
    write_feature_results,
)
from layerdrift.tasks.finetune import finetune  # noqa: E402
from layerdrift.tasks.sae import train_saes_for_run  # noqa: E402


def timed(label: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    elapsed = time.perf_counter() - start
    print(f"{label:<28} {elapsed:8.1f} s", flush=True)
    return out, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--runs-root", default="/tmp/ld-bench")
    parser.add_argument("--name", default=None)
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--existing-run", default=None, help="a run whose SAEs are trained")
    args = parser.parse_args()
    times: dict[str, float] = {}
    if args.existing_run:
        run = RunDir(args.existing_run)
        cfg = load_run_config(run.read_text("config.json"))
        report(run, cfg, times)
        return
    overrides = {
        "runs_root": args.runs_root,
        "name": args.name or f"features-{args.preset}-{args.dataset}",
        "data": {"dataset": args.dataset},
        "finetune": {"checkpoints": [0.0, 1.0]},  # only base and final are compared
        "report": {"enabled": False},
    }
    cfg = build_config(args.preset, overrides=overrides)
    run = RunDir(cfg.run_url)
    save_run_config(run, cfg.to_json(), cfg.config_hash())
    if not data_complete(run):
        timed("data", prepare_data, run, cfg)
    labels, times["finetune"] = timed("finetune", finetune, run, cfg)
    labels = ["base", "final"]
    create_store_for_run(run, cfg, labels)
    for label in labels:
        if missing_chunks(run.activations(), label):
            _, times[f"extract {label}"] = timed(
                f"extract {label}", extract_checkpoint_for_run, run, cfg, label
            )
    layers = list(range(open_store(run.activations()).sizes["layer"]))
    for label in labels:
        _, times[f"sae {label}"] = timed(
            f"saes {label}", train_saes_for_run, run, cfg, label, layers
        )
    report(run, cfg, times)


def report(run: RunDir, cfg, times: dict[str, float]) -> None:
    """Compare every layer with both SAEs, write the results, print and save the table."""
    per_layer = []
    for layer in feature_layers(run, cfg):
        result, times[f"features L{layer}"] = timed(
            f"features layer {layer}", compare_features_for_run, run, cfg, layer
        )
        per_layer.append(result)
    write_feature_results(run, cfg, per_layer)

    head = f"{'layer':>5} {'base-only':>9} {'shared':>7} {'ft-only':>7} {'dead':>5} {'lean':>5} "
    head += f"{'matched':>8} "
    head += f"{'ts base':>7} {'ts ft':>6} {'ts cc-b':>7} {'ts cc-s':>7} {'ts cc-f':>7} "
    head += f"{'FVU b>f':>7} {'FVU f>b':>7} {'FVU b>b':>7} {'FVU f>f':>7}"
    print(head)
    for r in per_layer:
        c, t, f = r["crosscoder_counts"], r["task_specific_fraction"], r["transfer_fvu"]
        print(
            f"{r['layer']:>5} {c['base_only']:>9} {c['shared']:>7} {c['finetuned_only']:>7} "
            f"{r['crosscoder_dead']:>5} {r.get('relative_norm_deviation', float('nan')):>5.3f} "
            f"{r['matched_fraction']:>8.3f} "
            f"{t['base_sae']:>7.3f} {t['finetuned_sae']:>6.3f} {t['crosscoder_base_only']:>7.3f} "
            f"{t['crosscoder_shared']:>7.3f} {t['crosscoder_finetuned_only']:>7.3f} "
            f"{f['base_on_finetuned']:>7.3f} {f['finetuned_on_base']:>7.3f} "
            f"{f['base_on_base']:>7.3f} {f['finetuned_on_finetuned']:>7.3f}"
        )
    out = ROOT / "benchmarks" / "results" / f"{cfg.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "device": cfg.device, "cuda": torch.cuda.is_available()},
        "config": cfg.model_dump(mode="json"),
        "seconds": times,
        "layers": [{k: v for k, v in r.items() if k not in ("cards", "config")} for r in per_layer],
    }  # fmt: skip
    out.write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out} and {run.child_url('features', 'cards.json')}")


if __name__ == "__main__":
    main()
