"""The extract stage: every checkpoint over the probe set, all layers x all tokens, into the store.

A window is a run of consecutive store chunks (as many as fit in memory). Its examples (every
one that overlaps it) go through the model (any family, loaded by the model adapter) in
length-sorted, right-padded batches with ``output_hidden_states=True``; each chunk is handed
to a background writer through a bounded queue as soon as its last token is in, so writes
overlap the next forward passes. Chunks already marked in the store's ``written`` manifest
are not computed again, which makes a rerun resume.
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
from layerdrift.storage.schema import StoreError, StoreMismatchError, chunk_bounds, n_chunks
from layerdrift.tasks.extract.plan import (
    WINDOW_BYTES,
    Window,
    plan_batches,
    plan_windows,
    window_chunks,
)
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


def _chunk_tokens(chunk: int, n_tokens: int, token_chunk: int) -> int:
    """How many tokens ``chunk`` holds (the last chunk may be short)."""
    start, stop = chunk_bounds(chunk, n_tokens, token_chunk)
    return stop - start


def _batch_arrays(batch: np.ndarray, tokens: dict, keep) -> tuple[np.ndarray, ...]:
    """Right-padded ``input_ids`` and mask (batch, width) of one batch, and the tokens to keep.

    ``keep(first, n)`` gives the store positions of an example's tokens that are wanted.
    Returns input_ids, mask, then for each kept token its batch row, its column and its store
    position (all (kept,)).
    """
    starts, counts, ids = tokens["token_start"], tokens["token_count"], tokens["token_id"]
    width = int(counts[batch].max())
    input_ids = np.full((len(batch), width), tokens["pad_id"], dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    rows, cols, positions = [], [], []
    for row, ex in enumerate(batch):
        first, n = int(starts[ex]), int(counts[ex])
        input_ids[row, :n] = ids[first : first + n]
        mask[row, :n] = 1
        wanted = keep(first, n)
        rows.append(np.full(len(wanted), row))
        cols.append(wanted - first)
        positions.append(wanted)
    return input_ids, mask, np.concatenate(rows), np.concatenate(cols), np.concatenate(positions)


def _run_window(model, window: Window, todo: set[int], tokens: dict, settings: dict, emit) -> None:
    """Forward the window's batches that hold tokens of a ``todo`` chunk.

    Each chunk, as an array (layer, chunk tokens, hidden), goes to ``emit(chunk, array)`` as
    soon as all its tokens are in. Batches come from the whole window's plan (written chunks
    included), so every token is computed in the same batch whatever was already written.
    """
    n_tokens, token_chunk = len(tokens["token_id"]), settings["token_chunk"]
    missing = np.array(sorted(c for c in window.chunks if c in todo), dtype=np.int64)
    left = {int(c): _chunk_tokens(int(c), n_tokens, token_chunk) for c in missing}
    buffers: dict[int, np.ndarray] = {}

    def keep(first: int, n: int) -> np.ndarray:
        span = np.arange(max(first, window.start), min(first + n, window.stop))
        return span[np.isin(span // token_chunk, missing)]

    for batch in plan_batches(window.examples, tokens["token_count"], settings["batch_size"]):
        input_ids, mask, rows, cols, positions = _batch_arrays(batch, tokens, keep)
        if not len(positions):
            continue  # every token of this batch is already in the store
        device = settings["device"]
        with torch.inference_mode():
            states = forward_hidden_states(
                model, torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)
            )  # (layer, batch, seq, hidden)
            index = torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)
            kept = states[:, index[0], index[1]].to(settings["dtype"]).cpu().numpy()
        chunk_of = positions // token_chunk
        for chunk in np.unique(chunk_of).tolist():
            here = chunk_of == chunk
            lo, hi = chunk_bounds(chunk, n_tokens, token_chunk)
            if chunk not in buffers:
                buffers[chunk] = np.empty((kept.shape[0], hi - lo, kept.shape[2]), kept.dtype)
            buffers[chunk][:, positions[here] - lo] = kept[:, here]
            left[chunk] -= int(here.sum())
            if left[chunk] == 0:
                emit(chunk, buffers.pop(chunk))


def _plan(
    attrs: dict, tokens: dict, batch_size: int, device: torch.device, window_bytes: int
) -> tuple[list[Window], dict]:
    """The windows of the store described by ``attrs`` and the settings of its forward passes.

    Depends on the store alone (and ``window_bytes``), so every caller batches alike.
    """
    itemsize = 2 if attrs["dtype"] == "float16" else 4
    per_window = window_chunks(
        int(attrs["token_chunk"]), attrs["n_layers"] * attrs["hidden"] * itemsize, window_bytes
    )
    windows = plan_windows(
        tokens["token_start"], tokens["token_count"], int(attrs["token_chunk"]), per_window
    )
    settings = {
        "token_chunk": int(attrs["token_chunk"]),
        "batch_size": batch_size,
        "device": device,
        "dtype": torch.float16 if attrs["dtype"] == "float16" else torch.float32,
    }
    return windows, settings


def extract_checkpoint(
    url: str,
    checkpoint: str,
    model_dir: str | Path,
    *,
    batch_size: int = 32,
    device: str = "auto",
    write_queue: int = 4,
    lock_timeout_s: float = 600.0,
    window_bytes: int = WINDOW_BYTES,
) -> int:
    """Fill the store's chunks of ``checkpoint`` from the model in ``model_dir``.

    Skips chunks already written (resume); returns the number of chunks written now.
    ``window_bytes`` bounds the activations held in memory per window (see
    :func:`plan_windows`): larger windows sort more examples together, so less padding.
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
        windows, settings = _plan(attrs, tokens, batch_size, torch_device, window_bytes)
        n_tokens = int(attrs["n_tokens"])
        missing = set(todo)
        done_tokens = n_tokens - sum(
            _chunk_tokens(c, n_tokens, settings["token_chunk"]) for c in missing
        )
        with tqdm(
            total=n_tokens, initial=done_tokens, unit="tok", desc=f"extract {checkpoint}"
        ) as bar:
            background = _BackgroundWriter(StoreWriter(url), checkpoint, lock, write_queue, bar)
            try:
                for window in windows:
                    if missing.intersection(window.chunks):
                        _run_window(model, window, missing, tokens, settings, background.put)
            except BaseException:
                background.close(raise_errors=False)  # keep the chunks already computed
                raise
            written = background.close()
    logger.info("checkpoint %s: wrote %d chunks to %s", checkpoint, written, url)
    return written


def store_token_states(
    url: str,
    model_dir: str | Path,
    *,
    batch_size: int = 32,
    device: str = "auto",
    window_bytes: int = WINDOW_BYTES,
) -> np.ndarray:
    """Hidden states of every token of the store at ``url`` from the model in ``model_dir``:
    shape (layer, token, hidden), in the store's dtype. Nothing is written.

    Computed exactly as :func:`extract_checkpoint` computes a checkpoint's chunks (same
    windows, batches, padding and dtype), so a checkpoint already in the store gives the same
    values. The whole array is held in memory (tokens × layers × hidden × 2 bytes in float16).
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
    windows, settings = _plan(attrs, tokens, batch_size, torch_device, window_bytes)
    n_tokens, token_chunk = int(attrs["n_tokens"]), settings["token_chunk"]
    states = np.empty((int(attrs["n_layers"]), n_tokens, int(attrs["hidden"])), attrs["dtype"])

    def put(chunk: int, array: np.ndarray) -> None:
        start, stop = chunk_bounds(chunk, n_tokens, token_chunk)
        states[:, start:stop] = array

    every = set(range(n_chunks(n_tokens, token_chunk)))
    for window in tqdm(windows, desc=f"hidden states of {Path(model_dir).name}", unit="window"):
        _run_window(model, window, every, tokens, settings, put)
    return states


def tokens_of_store(url: str) -> dict[str, np.ndarray]:
    """Token ids (token,) and per-example ``token_start`` and ``token_count`` (example,)."""
    group = zarr.open_group(url, mode="r")
    return {name: group[name][...] for name in ("token_id", "token_start", "token_count")}
