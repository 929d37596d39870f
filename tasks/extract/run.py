"""The extract stage: every checkpoint over the probe set, all layers x all tokens, into the store.

One shard is one chunk-aligned token range (one store chunk). Its examples (every one that
overlaps the range) go through the model (any family, loaded by the model adapter) in
length-sorted, right-padded batches with ``output_hidden_states=True``; only the shard's own
tokens are kept and handed to a background writer through a bounded queue, so writes overlap
the next forward passes. Shards already marked in the store's ``written`` manifest are
skipped, which makes a rerun resume.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from layerdrift.storage.activations import StoreWriter, missing_chunks, read_attrs, writer_lock
from layerdrift.storage.schema import StoreError, StoreMismatchError, n_chunks
from layerdrift.tasks.extract.plan import Shard, plan_batches, plan_shards
from layerdrift.tasks.extract.store import model_identity
from layerdrift.tasks.modeling import (
    forward_hidden_states,
    load_encoder,
    load_tokenizer,
    select_device,
    tokenizer_fingerprint,
)

logger = logging.getLogger(__name__)


def _check_checkpoint(url: str, attrs: dict, checkpoint: str, model_dir: Path, tokenizer) -> None:
    """Refuse a checkpoint whose tokenizer, shape or weights differ from the store's."""
    if checkpoint not in attrs["checkpoints"]:
        raise StoreMismatchError(
            f"checkpoint {checkpoint!r} is not in the store {url} (it holds "
            f"{attrs['checkpoints']}): recreate the store with this checkpoint"
        )
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != attrs["tokenizer"]:
        raise StoreMismatchError(
            f"checkpoint {checkpoint!r} ({model_dir}) has tokenizer {fingerprint}, the store "
            f"{url} was tokenized with {attrs['tokenizer']}: every checkpoint must share the "
            "run's tokenizer"
        )
    ident = model_identity(model_dir)
    shape = (ident["num_hidden_layers"] + 1, ident["hidden_size"])
    if shape != (attrs["n_layers"], attrs["hidden"]):
        raise StoreMismatchError(
            f"checkpoint {checkpoint!r} gives {shape[0]} layers x hidden {shape[1]}, the store "
            f"{url} holds {attrs['n_layers']} x {attrs['hidden']}: wrong model for this store"
        )
    recorded = attrs["models"].get(checkpoint, {}).get("weights_sha256")
    if recorded and recorded != ident["weights_sha256"]:
        raise StoreMismatchError(
            f"checkpoint {checkpoint!r} ({model_dir}) changed since the store {url} was "
            f"created (weights {ident['weights_sha256']} vs {recorded}): create the store "
            "again (create_store_for_run clears this checkpoint's chunks) and re-extract"
        )


class _BackgroundWriter:
    """A thread writing (chunk, array) items from a bounded queue; errors re-raised on close."""

    def __init__(self, writer: StoreWriter, checkpoint: str, lock, size: int, bar) -> None:
        self.writer, self.checkpoint, self.lock, self.bar = writer, checkpoint, lock, bar
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.error: BaseException | None = None
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain so the producer never blocks
            chunk, data = item
            try:
                self.lock.check()
                self.writer.write(self.checkpoint, chunk, data)
                self.written += 1
                self.bar.update(data.shape[1])
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error

    def put(self, chunk: int, data: np.ndarray) -> None:
        """Queue one chunk (layer, tokens, hidden); raises a writer error seen so far."""
        if self.error is not None:
            raise self.error
        self.queue.put((chunk, data))

    def close(self, raise_errors: bool = True) -> int:
        """Finish the queued writes; return how many chunks were written."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and raise_errors:
            raise self.error
        return self.written


def _run_shard(model, shard: Shard, tokens: dict, batch_size: int, device, dtype) -> np.ndarray:
    """Hidden states of one shard's tokens, shape (layer, stop - start, hidden)."""
    starts, counts, ids = tokens["token_start"], tokens["token_count"], tokens["token_id"]
    out = None
    for batch in plan_batches(shard.examples, counts, batch_size):
        width = int(counts[batch].max())
        input_ids = np.full((len(batch), width), tokens["pad_id"], dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        rows, cols, dest = [], [], []  # kept tokens: batch row, position, place in the shard
        for row, ex in enumerate(batch):
            first, n = int(starts[ex]), int(counts[ex])
            input_ids[row, :n] = ids[first : first + n]
            mask[row, :n] = 1
            lo, hi = max(first, shard.start), min(first + n, shard.stop)
            rows.append(np.full(hi - lo, row))
            cols.append(np.arange(lo - first, hi - first))
            dest.append(np.arange(lo - shard.start, hi - shard.start))
        with torch.inference_mode():
            states = forward_hidden_states(
                model, torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)
            )  # (layer, batch, seq, hidden)
            rows_t = torch.from_numpy(np.concatenate(rows)).to(device)
            cols_t = torch.from_numpy(np.concatenate(cols)).to(device)
            kept = states[:, rows_t, cols_t].to(dtype).cpu().numpy()  # (layer, kept, hidden)
        if out is None:
            out = np.empty((kept.shape[0], shard.stop - shard.start, kept.shape[2]), kept.dtype)
        out[:, np.concatenate(dest)] = kept
    return out


def extract_checkpoint(
    url: str,
    checkpoint: str,
    model_dir: str | Path,
    *,
    batch_size: int = 32,
    device: str = "auto",
    write_queue: int = 4,
    lock_timeout_s: float = 600.0,
) -> int:
    """Fill the store's chunks of ``checkpoint`` from the model in ``model_dir``.

    Skips chunks already written (resume); returns the number of chunks written now.
    """
    model_dir = Path(model_dir)
    attrs = read_attrs(url)
    if attrs is None:
        raise StoreError(f"no activation store at {url}: create it first (create_store_task)")
    tokenizer = load_tokenizer(str(model_dir))
    _check_checkpoint(url, attrs, checkpoint, model_dir, tokenizer)
    todo = missing_chunks(url, checkpoint)
    if not todo:
        logger.info("checkpoint %s: every chunk already in %s", checkpoint, url)
        return 0
    with writer_lock(url, timeout_s=lock_timeout_s, checkpoint=checkpoint) as lock:
        todo = missing_chunks(url, checkpoint)
        torch_device = select_device(device)
        model = load_encoder(model_dir, torch_device)
        tokens = tokens_of_store(url)
        tokens["pad_id"] = tokenizer.pad_token_id  # the padding policy guarantees one
        shards = plan_shards(
            tokens["token_start"], tokens["token_count"], int(attrs["token_chunk"]), todo
        )
        dtype = torch.float16 if attrs["dtype"] == "float16" else torch.float32
        n_tokens = int(attrs["n_tokens"])
        done_tokens = n_tokens - sum(s.stop - s.start for s in shards)
        with tqdm(
            total=n_tokens, initial=done_tokens, unit="tok", desc=f"extract {checkpoint}"
        ) as bar:
            background = _BackgroundWriter(StoreWriter(url), checkpoint, lock, write_queue, bar)
            try:
                for shard in shards:
                    background.put(
                        shard.chunk,
                        _run_shard(model, shard, tokens, batch_size, torch_device, dtype),
                    )
            except BaseException:
                background.close(raise_errors=False)  # keep the shards already computed
                raise
            written = background.close()
    logger.info("checkpoint %s: wrote %d chunks to %s", checkpoint, written, url)
    return written


def store_token_states(
    url: str, model_dir: str | Path, *, batch_size: int = 32, device: str = "auto"
) -> np.ndarray:
    """Hidden states of every token of the store at ``url`` from the model in ``model_dir``:
    shape (layer, token, hidden), in the store's dtype. Nothing is written.

    Computed exactly as :func:`extract_checkpoint` computes a checkpoint's chunks (same shards,
    batches, padding and dtype), so a checkpoint already in the store gives the same values.
    The whole array is held in memory (tokens × layers × hidden × 2 bytes in float16).
    """
    attrs = read_attrs(url)
    if attrs is None:
        raise StoreError(f"no activation store at {url}: run the extract stage first")
    tokenizer = load_tokenizer(str(model_dir))
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != attrs["tokenizer"]:
        raise StoreMismatchError(
            f"model {model_dir} has tokenizer {fingerprint}, the store {url} was tokenized "
            f"with {attrs['tokenizer']}: compare models that share the run's tokenizer"
        )
    torch_device = select_device(device)
    model = load_encoder(model_dir, torch_device)
    tokens = tokens_of_store(url)
    tokens["pad_id"] = tokenizer.pad_token_id
    token_chunk, n_tokens = int(attrs["token_chunk"]), int(attrs["n_tokens"])
    chunks = list(range(n_chunks(n_tokens, token_chunk)))
    shards = plan_shards(tokens["token_start"], tokens["token_count"], token_chunk, chunks)
    dtype = torch.float16 if attrs["dtype"] == "float16" else torch.float32
    states = np.empty(
        (int(attrs["n_layers"]), n_tokens, int(attrs["hidden"])), dtype=attrs["dtype"]
    )
    for shard in tqdm(shards, desc=f"hidden states of {Path(model_dir).name}", unit="chunk"):
        states[:, shard.start : shard.stop] = _run_shard(
            model, shard, tokens, batch_size, torch_device, dtype
        )
    return states


def tokens_of_store(url: str) -> dict[str, np.ndarray]:
    """Token ids (token,) and per-example ``token_start`` and ``token_count`` (example,)."""
    group = zarr.open_group(url, mode="r")
    return {name: group[name][...] for name in ("token_id", "token_start", "token_count")}
