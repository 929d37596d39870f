"""Transfer recovery on a finished run: one classifier call per SAE, or one for both.

The features stage splices the base and the fine-tuned SAE of a layer into the fine-tuned
classifier (:func:`tasks.features.transfer.transfer_recovery`). This times, interleaved in
one process on the run's SAEs and held-out examples, a call of
:func:`tasks.dictionary.runs.spliced_metrics_of` per SAE (a classifier load and a clean, a
spliced and a mean-ablated pass each, as the stage did before) against one call for both
(one load; the clean and mean-ablated passes once). The metrics of the two versions must
be equal to the bit. Prints a table and writes ``benchmarks/results/transfer.json``.

Usage: ``.venv/bin/python benchmarks/transfer.py runs/quick [--layer 3] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from layerdrift.config import load_run_config
from layerdrift.storage import RunDir
from layerdrift.storage.activations import open_store
from layerdrift.tasks.dictionary import load_dictionary, make_loader
from layerdrift.tasks.dictionary.runs import spliced_metrics_of

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import interleaved, machine_fields, print_medians  # noqa: E402


def main() -> None:
    """Time both versions, check their metrics agree, print and write the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/transfer.json")
    args = parser.parse_args()
    run = RunDir(str(args.run))
    cfg = load_run_config(run.read_text("config.json"))
    f = cfg.features
    saes = {
        "base_on_finetuned": load_dictionary(run.sae(f.base, args.layer)),
        "finetuned_on_finetuned": load_dictionary(run.sae(f.finetuned, args.layer)),
    }
    sources = [(f.base, args.layer), (f.finetuned, args.layer)]
    loader = make_loader(open_store(run.activations()), sources, cfg.sae, f.training.batch_size)
    load_before = os.getloadavg()

    def one_call_each() -> dict:
        return {
            name: spliced_metrics_of(run, cfg, loader, {name: sae}, f.finetuned, source=1)[name]
            for name, sae in saes.items()
        }

    def one_call_for_both() -> dict:
        return spliced_metrics_of(run, cfg, loader, saes, f.finetuned, source=1)

    versions = {"one call each": one_call_each, "one call for both": one_call_for_both}
    times, found = interleaved(versions, args.repeats)
    equal = found["one call each"] == found["one call for both"]
    median = print_medians(f"transfer recovery, layer {args.layer}", times)
    result = {
        "run": str(args.run),
        "model": cfg.model,
        "layer": args.layer,
        "seconds": times,
        "median_seconds": median,
        "speedup": median["one call each"] / median["one call for both"],
        "bit_identical": equal,
        "metrics": found["one call for both"],
        **machine_fields(load_before),
    }
    print(f"speedup {result['speedup']:.2f}x, bit-identical: {equal}, load {load_before}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
