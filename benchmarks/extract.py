"""Extraction throughput on a model: the full pipeline against a bare forward pass.

All runs see the same Rotten Tomatoes probe texts. "bare" runs only
``model(..., output_hidden_states=True)`` per length-sorted batch and keeps nothing, once
with one length sort over the whole probe set (the reference: what the pipeline's window
does when the store fits in it) and once with each store chunk sorted alone. "pipeline" is
``extract_checkpoint`` into a fresh local store (float16, crc32c, background writer), timed
after the model is loaded ("loop") and as a whole call.
Runs alternate, so a busy machine slows both alike; the median of the repeats is reported.
The model is the bundled ``minilm-l6`` unless ``--model`` names another (any name
``layerdrift run --model`` takes, e.g. ``all-mpnet-base-v2`` after ``make paper``).
Prints a table and writes ``benchmarks/results/extract.json`` (``extract-<model>.json`` for
another model).

    .venv/bin/python benchmarks/extract.py [--model minilm-l6] [--texts 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import layerdrift.tasks.extract.run as extract_run  # noqa: E402
from layerdrift.config import DataConfig  # noqa: E402
from layerdrift.storage.activations import read_attrs  # noqa: E402
from layerdrift.tasks.data import load_labelled_texts  # noqa: E402
from layerdrift.tasks.extract import create_activation_store, plan_batches, plan_windows  # noqa: E402
from layerdrift.tasks.modeling import (  # noqa: E402
    BUNDLED_MODEL,
    load_tokenizer,
    model_shape,
    resolve_model,
    select_device,
)


class PeakRSS:
    """Samples this process's resident memory every 20 ms; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bare_forward(
    model_dir: str,
    url: str,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    chunks_per_window: int,
) -> dict:
    """Windows of ``chunks_per_window`` store chunks, length-sorted batches, results dropped.

    One chunk per window is the plan before windows (each chunk sorted on its own, examples
    on chunk edges forwarded twice); a window over the whole store is one global sort.
    """
    model = extract_run.load_encoder(model_dir, device)
    tokens = extract_run.tokens_of_store(url)
    attrs = read_attrs(url)
    starts, counts, ids = tokens["token_start"], tokens["token_count"], tokens["token_id"]
    windows = plan_windows(starts, counts, int(attrs["token_chunk"]), chunks_per_window)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    real = padded = 0
    with PeakRSS() as rss:
        sync()
        start = time.perf_counter()
        for window in windows:
            for batch in plan_batches(window.examples, counts, batch_size):
                width = int(counts[batch].max())
                input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, ex in enumerate(batch):
                    input_ids[row, : counts[ex]] = ids[starts[ex] : starts[ex] + counts[ex]]
                    mask[row, : counts[ex]] = 1
                ids_t, mask_t = torch.from_numpy(input_ids), torch.from_numpy(mask)
                with torch.inference_mode():
                    extract_run.forward_hidden_states(model, ids_t.to(device), mask_t.to(device))
                real += int(counts[batch].sum())
                padded += len(batch) * width
        sync()
        seconds = time.perf_counter() - start
    n_tokens = int(attrs["n_tokens"])
    return {"seconds": seconds, "tokens": n_tokens, "tokens_per_s": n_tokens / seconds,
            "padding_fraction": 1 - real / padded, "peak_rss_mb": rss.peak / 2**20}  # fmt: skip


def pipeline(model_dir: str, url: str, batch_size: int, device: str) -> dict:
    """``extract_checkpoint`` into a fresh store, timed as a whole and after model load."""
    loaded_at: list[float] = []
    real_load = extract_run.load_encoder

    def timed_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loaded_at.append(time.perf_counter())
        return model

    extract_run.load_encoder = timed_load
    try:
        with PeakRSS() as rss:
            start = time.perf_counter()
            extract_run.extract_checkpoint(
                url, "base", model_dir, batch_size=batch_size, device=device
            )
            end = time.perf_counter()
    finally:
        extract_run.load_encoder = real_load
    n_tokens = int(read_attrs(url)["n_tokens"])
    stored = sum(p.stat().st_size for p in Path(url, "activations", "c").rglob("*") if p.is_file())
    loop = end - loaded_at[0]
    return {"seconds": loop, "call_seconds": end - start, "tokens": n_tokens,
            "tokens_per_s": n_tokens / loop, "call_tokens_per_s": n_tokens / (end - start),
            "bytes_stored": stored, "bytes_per_token": stored / n_tokens,
            "mb_per_s": stored / 2**20 / loop, "peak_rss_mb": rss.peak / 2**20}  # fmt: skip


def write_only(source_url: str, target_url: str) -> dict:
    """Rewrite the stored chunks into an identical fresh store: storage speed alone."""
    from layerdrift.storage.activations import StoreWriter, open_store

    acts = open_store(source_url).activations.sel(checkpoint="base").values  # (layer, tok, hid)
    attrs = read_attrs(source_url)
    chunk, n_tokens = int(attrs["token_chunk"]), int(attrs["n_tokens"])
    writer = StoreWriter(target_url)
    start = time.perf_counter()
    for c in range(-(-n_tokens // chunk)):
        writer.write("base", c, acts[:, c * chunk : (c + 1) * chunk])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mb_per_s": acts.nbytes / 2**20 / seconds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=BUNDLED_MODEL, help="A name `layerdrift run` takes.")
    parser.add_argument("--texts", type=int, default=600, help="Probe texts (Rotten Tomatoes).")
    parser.add_argument("--token-chunk", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="Default: benchmarks/results/extract*.json")
    args = parser.parse_args(argv)
    suffix = "" if args.model == BUNDLED_MODEL else "-" + Path(args.model).name
    out = args.out or str(ROOT / "benchmarks" / "results" / f"extract{suffix}.json")

    frame, _, identity = load_labelled_texts(DataConfig(dataset="rotten-tomatoes"))
    frame = frame.sample(n=args.texts, random_state=0)
    model_dir = resolve_model(args.model)
    shape = model_shape(model_dir)
    tokenizer = load_tokenizer(model_dir)
    device = select_device(args.device)
    bare_runs, chunk_runs, pipe_runs, write_runs = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats + 1):
            url = str(Path(tmp) / f"store-{rep}.zarr")
            create_activation_store(
                url, frame["text"].tolist(), frame["label"].tolist(), tokenizer,
                {"base": model_dir}, max_length=args.max_length, token_chunk=args.token_chunk,
                dataset_identity=identity,
            )  # fmt: skip
            if rep == args.repeats:
                write_runs.append(write_only(str(Path(tmp) / "store-0.zarr"), url))
                break
            bare = (model_dir, url, args.batch_size, device, tokenizer.pad_token_id)
            chunk_runs.append(bare_forward(*bare, chunks_per_window=1))
            bare_runs.append(bare_forward(*bare, chunks_per_window=2**31))
            pipe_runs.append(pipeline(model_dir, url, args.batch_size, args.device))

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    summary = {
        "model": f"{args.model} ({shape.model_type}, {shape.num_hidden_layers} layers + "
        f"embeddings, hidden {shape.hidden_size})",
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "platform": platform.platform(), "texts": args.texts, "tokens": pipe_runs[0]["tokens"],
        "token_chunk": args.token_chunk, "batch_size": args.batch_size, "repeats": args.repeats,
        "bare_tokens_per_s": med(bare_runs, "tokens_per_s"),
        "bare_per_chunk_tokens_per_s": med(chunk_runs, "tokens_per_s"),
        "padding_fraction_per_chunk": med(chunk_runs, "padding_fraction"),
        "pipeline_tokens_per_s": med(pipe_runs, "tokens_per_s"),
        "pipeline_call_tokens_per_s": med(pipe_runs, "call_tokens_per_s"),
        "ratio_loop": med(pipe_runs, "tokens_per_s") / med(bare_runs, "tokens_per_s"),
        "ratio_call": med(pipe_runs, "call_tokens_per_s") / med(bare_runs, "tokens_per_s"),
        "mb_per_s": med(pipe_runs, "mb_per_s"),
        "bytes_per_token": med(pipe_runs, "bytes_per_token"),
        "write_only_mb_per_s": write_runs[0]["mb_per_s"],
        "padding_fraction": med(bare_runs, "padding_fraction"),
        "peak_rss_mb_bare": max(r["peak_rss_mb"] for r in bare_runs),
        "peak_rss_mb_pipeline": max(r["peak_rss_mb"] for r in pipe_runs),
        "runs": {"bare": bare_runs, "bare_per_chunk": chunk_runs, "pipeline": pipe_runs,
                 "write_only": write_runs},
    }  # fmt: skip
    rows = [
        ("tokens (probe texts)", f"{summary['tokens']} ({args.texts})"),
        ("bare forward tokens/s, one global length sort", f"{summary['bare_tokens_per_s']:.0f}"),
        ("bare forward tokens/s, each chunk sorted alone",
         f"{summary['bare_per_chunk_tokens_per_s']:.0f}"),
        ("pipeline tokens/s (after model load)", f"{summary['pipeline_tokens_per_s']:.0f}"),
        ("pipeline tokens/s (whole call)", f"{summary['pipeline_call_tokens_per_s']:.0f}"),
        ("ratio pipeline / bare (loop)", f"{summary['ratio_loop']:.3f}"),
        ("ratio pipeline / bare (whole call)", f"{summary['ratio_call']:.3f}"),
        ("MB/s written (pipeline)", f"{summary['mb_per_s']:.1f}"),
        ("MB/s write only (StoreWriter, same chunks)", f"{summary['write_only_mb_per_s']:.0f}"),
        (f"bytes per token ({shape.num_hidden_layers + 1} layers x {shape.hidden_size} x fp16)",
         f"{summary['bytes_per_token']:.0f}"),
        ("padding fraction: global sort / each chunk alone",
         f"{summary['padding_fraction']:.3f} / {summary['padding_fraction_per_chunk']:.3f}"),
        ("peak RSS bare / pipeline (MB)",
         f"{summary['peak_rss_mb_bare']:.0f} / {summary['peak_rss_mb_pipeline']:.0f}"),
        ("device, torch threads, load avg", f"{device}, {torch.get_num_threads()}, "
         f"{' '.join(f'{x:.1f}' for x in summary['load_average'])}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
