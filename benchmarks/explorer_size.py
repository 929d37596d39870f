"""Size of explorer.html: a real run's page, part by part, and the default preset's page.

The page's size depends only on the shapes of what it holds (base64 arrays are exact, JSON
numbers nearly so), so the default preset's page is built from arrays of its shapes: 7
layers, 3 dictionaries of 4 × 384 latents each, 5 checkpoints, 1,000 probe examples of the
mean token count measured on the given run (same dataset). Prints a table and writes
``benchmarks/results/explorer_size.json``.

    .venv/bin/python benchmarks/explorer_size.py runs/quick
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from layerdrift.storage.rundir import EXPLORER_FILE, RunDir  # noqa: E402
from layerdrift.tasks.report.explorer import page, script_json  # noqa: E402
from layerdrift.tasks.report.explorer_data import explorer_data  # noqa: E402
from layerdrift.tasks.report.latents import CONTEXT, HIST_BINS, TOP, LatentTable  # noqa: E402
from layerdrift.tasks.report.load import load_inputs  # noqa: E402
from layerdrift.tasks.report.tokens import open_store  # noqa: E402

DEFAULT = {"layers": 7, "d_sae": 4 * 384, "checkpoints": 5, "examples": 1000}
MB = 1e6


def parts(data: dict) -> dict[str, float]:
    """MB of the page's data by part."""
    return {
        "groups": len(script_json({"g": data["groups"]})) / MB,
        "probe tokens and drift": len(script_json({"p": data["probe"]})) / MB,
        "latents": len(script_json({"l": data["latents"]})) / MB,
    }


def random_table(rng: np.random.Generator, source: str, layer: int, d_sae: int, n_ex: int):
    """A latent table of the given shape with plausible values."""
    k = TOP + 3
    return LatentTable(
        source=source,
        layer=layer,
        auroc=rng.uniform(0.2, 0.8, d_sae),
        density=rng.uniform(0, 0.3, d_sae),
        max_act=rng.uniform(0.5, 5, d_sae),
        hist=rng.integers(0, 3000, (d_sae, HIST_BINS)),
        examples=rng.integers(0, n_ex, (d_sae, k)),
        peaks=rng.integers(0, 40, (d_sae, k)),
        windows=rng.uniform(0, 5, (d_sae, k, 2 * CONTEXT + 1)).astype(np.float32),
        partner=None if source == "crosscoder" else rng.integers(0, d_sae, d_sae),
        partner_cosine=None if source == "crosscoder" else rng.uniform(0, 1, d_sae),
        relative_norm=rng.uniform(0, 1, d_sae) if source == "crosscoder" else None,
        group=rng.integers(0, 3, d_sae) if source == "crosscoder" else None,
    )


def default_shaped(inputs, store: xr.Dataset) -> tuple[dict, int]:
    """The page data with the default preset's shapes, texts and tokens resampled from
    ``store``; returns it and its token count."""
    rng = np.random.default_rng(0)
    n_ex = DEFAULT["examples"]
    pick = rng.integers(0, store.sizes["example"], n_ex)
    counts = store.token_count.values[pick]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    source = np.concatenate(
        [np.arange(s, s + c) for s, c in zip(store.token_start.values[pick], counts, strict=True)]
    )
    fake = xr.Dataset(
        {
            "text": ("example", store.text.values[pick]),
            "label": ("example", store.label.values[pick]),
            "token_start": ("example", starts),
            "token_count": ("example", counts),
            "token_text": ("token", store.token_text.values[source]),
        },
        coords={"checkpoint": ["base", "a", "b", "c", "final"]},
    )
    n_tok = int(counts.sum())
    layers = np.arange(DEFAULT["layers"])
    drift = xr.DataArray(
        rng.uniform(0, 1, (DEFAULT["checkpoints"], len(layers), n_tok)).astype(np.float32),
        dims=("checkpoint", "layer", "token"),
        coords={"checkpoint": list(fake.checkpoint.values), "layer": layers},
        name="drift",
    )
    tables = [
        random_table(rng, s, int(layer), DEFAULT["d_sae"], n_ex)
        for layer in layers
        for s in ("base_sae", "finetuned_sae", "crosscoder")
    ]
    probs = xr.DataArray(
        rng.dirichlet([1, 1], (DEFAULT["checkpoints"], n_ex)).astype(np.float32),
        dims=("checkpoint", "example", "class"),
        coords={"checkpoint": list(fake.checkpoint.values)},
    )
    data = explorer_data(inputs, fake, probs, tables, drift=drift)
    return data, n_tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run directory (its page and token lengths)")
    args = parser.parse_args()
    run = RunDir(args.run)
    inputs = load_inputs(run)
    store = open_store(inputs)
    real_mb = len(run.read_text(EXPLORER_FILE).encode()) / MB
    data, n_tok = default_shaped(inputs, store)
    default_mb = len(page(data).encode()) / MB
    rows = {"run page (measured)": real_mb, "default preset page (shapes)": default_mb}
    print(f"{'page':<34}{'MB':>8}")
    for name, mb in rows.items():
        print(f"{name:<34}{mb:>8.2f}")
    print(f"default-shaped parts ({n_tok:,} tokens):")
    for name, mb in parts(data).items():
        print(f"  {name:<32}{mb:>8.2f}")
    out = ROOT / "benchmarks" / "results" / "explorer_size.json"
    out.write_text(
        json.dumps(
            {
                "run": args.run,
                "run_page_mb": round(real_mb, 3),
                "default_page_mb": round(default_mb, 3),
                "default_shapes": {**DEFAULT, "tokens": n_tok},
                "default_parts_mb": {k: round(v, 3) for k, v in parts(data).items()},
                "machine": platform.platform(),
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
