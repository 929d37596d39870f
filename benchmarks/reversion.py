"""Layer reversion on a finished run, with and without replaying the layers variants share.

Loads the run's ``base`` and ``final`` checkpoints and its validation split as the
importance stage does, and scores every reversion variant twice per repeat, interleaved in
one process: every variant in full, and with shared layers replayed
(:mod:`tasks.importance.replay`). The two ``layer_reversion`` arrays must be equal to the
bit. Prints a table and writes ``benchmarks/results/reversion.json``.

Usage: ``.venv/bin/python benchmarks/reversion.py runs/quick [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from layerdrift.config import load_run_config
from layerdrift.storage import RunDir
from layerdrift.storage.checkpoints import local_checkpoint_path
from layerdrift.tasks.importance import reversion
from layerdrift.tasks.importance.run import validation_evaluator
from layerdrift.tasks.modeling import layer_parameters, load_classifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import interleaved, machine_fields, print_medians  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reversion.json")
    args = parser.parse_args()
    run = RunDir(str(args.run))
    cfg = load_run_config(run.read_text("config.json"))
    device = torch.device("cpu")
    final = load_classifier(local_checkpoint_path(run, "final"))
    base = load_classifier(local_checkpoint_path(run, "base"))
    layout = layer_parameters(final)
    weights = reversion.base_weights(base, layout)
    score = validation_evaluator(run, cfg, device)
    load_before = os.getloadavg()

    def full() -> np.ndarray:
        with mock.patch.object(reversion, "_replayer", return_value=None):
            return reversion.reversion_values(final, weights, layout, score)

    def replayed() -> np.ndarray:
        return reversion.reversion_values(final, weights, layout, score)

    times, values = interleaved({"full": full, "replayed": replayed}, args.repeats)
    equal = bool(np.array_equal(values["full"], values["replayed"]))
    median = print_medians("scoring", times)
    result = {
        "run": str(args.run),
        "model": cfg.model,
        "num_layers": layout.num_layers,
        "n_validation": int(cfg.data.val_size),
        "seconds": times,
        "median_seconds": median,
        "speedup": median["full"] / median["replayed"],
        "bit_identical": equal,
        **machine_fields(load_before),
    }
    print(f"speedup {result['speedup']:.2f}x, bit-identical: {equal}, load {load_before}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
