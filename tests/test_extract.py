"""Extraction into the store, against a direct forward pass of each checkpoint.

Three tiny BERT classifiers (seeds 0, 1, 2) stand for base, a middle step and final.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import make_tiny_bert, separable_texts

import layerdrift.tasks.extract.run as extract_run
from layerdrift.config import RunConfig
from layerdrift.storage.activations import missing_chunks, open_store
from layerdrift.storage.rundir import RunDir
from layerdrift.storage.schema import StoreMismatchError
from layerdrift.tasks.extract import (
    create_activation_store,
    create_store_for_run,
    create_store_task,
    extract_checkpoint,
    extract_checkpoint_for_run,
    extract_checkpoint_task,
    extraction_complete,
    plan_batches,
    plan_windows,
)
from layerdrift.tasks.extract.plan import window_chunks
from layerdrift.tasks.modeling import load_tokenizer

LABELS = ("base", "step-000010", "final")
CHUNK = 16


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Three tiny BERT classifier folders with different weights and one tokenizer."""
    root = tmp_path_factory.mktemp("ckpts")
    return {label: make_tiny_bert(root / label, seed=s) for s, label in enumerate(LABELS)}


@pytest.fixture(scope="module")
def probe() -> tuple[list[str], list[int]]:
    """20 short texts (5..11 tokens each) and their labels."""
    frame = separable_texts(20, seed=3)
    return frame["text"].tolist(), [int(v == "pos") for v in frame["label"]]


def make_store(url: str, checkpoints: dict, probe, **kwargs) -> str:
    texts, labels = probe
    tokenizer = load_tokenizer(str(next(iter(checkpoints.values()))))
    return create_activation_store(
        url, texts, labels, tokenizer, checkpoints, max_length=64, token_chunk=CHUNK, **kwargs
    )


# Two chunks per window: the 3-layer, hidden-32 float16 store holds 192 bytes per token.
TWO_CHUNKS = 2 * CHUNK * 3 * 32 * 2


def extract_all(url: str, checkpoints: dict, **kwargs) -> None:
    for label, folder in checkpoints.items():
        extract_checkpoint(url, label, folder, batch_size=3, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def full_store(tmp_path_factory, checkpoints, probe) -> str:
    """A store extracted in one go: the reference for resume tests."""
    url = str(tmp_path_factory.mktemp("full") / "activations.zarr")
    make_store(url, checkpoints, probe)
    extract_all(url, checkpoints)
    return url


def test_every_layer_and_token_equals_a_direct_forward(full_store, checkpoints, probe):
    from transformers import AutoModel, BertForSequenceClassification

    texts, labels = probe
    tokenizer = load_tokenizer(str(checkpoints["base"]))
    ds = open_store(full_store)
    assert ds.sizes["layer"] == 3 and ds.sizes["hidden"] == 32 and ds.activations.dtype == "f2"
    assert ds.label.values.tolist() == labels
    for label, folder in checkpoints.items():
        model = AutoModel.from_pretrained(folder).eval()
        stored = ds.activations.sel(checkpoint=label).values  # (layer, token, hidden)
        for i, text in enumerate(texts):
            encoded = tokenizer(text, return_tensors="pt")  # unpadded, one example
            with torch.no_grad():
                out = model(**encoded, output_hidden_states=True)
            expected = torch.stack(out.hidden_states)[:, 0].numpy()  # (layer, seq, hidden)
            tokens = (ds.example_of_token == i).values
            np.testing.assert_allclose(stored[:, tokens], expected, rtol=2e-3, atol=2e-3)
            ids = encoded["input_ids"][0].tolist()
            assert ds.token_id.values[tokens].tolist() == ids  # padding never stored
            assert ds.token_piece.values[tokens].tolist() == tokenizer.convert_ids_to_tokens(ids)
            assert ds.position.values[tokens].tolist() == list(range(len(ids)))
            assert ds.is_special.values[tokens].tolist() == [
                t in (tokenizer.cls_token_id, tokenizer.sep_token_id) for t in ids
            ]
    # The encoder loaded from a classifier folder is the classifier's own encoder.
    classifier = BertForSequenceClassification.from_pretrained(checkpoints["final"]).eval()
    encoded = tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        direct = classifier.bert(**encoded, output_hidden_states=True).hidden_states[2][0]
    np.testing.assert_allclose(
        ds.activations.sel(checkpoint="final", layer=2).values[: direct.shape[0]],
        direct.numpy(),
        rtol=2e-3,
        atol=2e-3,
    )


def test_windows_cover_every_token_once():
    counts = np.array([5, 9, 3, 20, 4])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    windows = plan_windows(starts, counts, 8, 2)
    assert [w.chunks for w in windows] == [(0, 1), (2, 3), (4, 5)]
    covered = np.zeros(counts.sum(), dtype=int)
    for window in windows:
        covered[window.start : window.stop] += 1
        for ex in range(len(counts)):
            overlaps = starts[ex] < window.stop and starts[ex] + counts[ex] > window.start
            assert (ex in window.examples) == overlaps
    assert (covered == 1).all() and windows[-1].stop == counts.sum()
    assert len(plan_windows(starts, counts, 8, 100)) == 1  # the whole store sorted at once
    assert window_chunks(8, 192, window_bytes=2 * 8 * 192 + 5) == 2
    assert window_chunks(8, 192, window_bytes=1) == 1  # at least one chunk
    batches = plan_batches((0, 1, 2, 3, 4), counts, 2, max_padding=1.0)
    assert [b.tolist() for b in batches] == [[3, 1], [0, 4], [2]]
    # 20 then 9 would be 27% padding; 9, 5 is 22%; 9, 5, 4 would be 33%; 4, 3 is 12%.
    batches = plan_batches((0, 1, 2, 3, 4), counts, 8, max_padding=0.25)
    assert [b.tolist() for b in batches] == [[3], [1, 0], [4, 2]]
    with pytest.raises(ValueError, match="chunks_per_window"):
        plan_windows(starts, counts, 8, 0)


def test_one_window_pads_less_than_one_chunk_per_sort(full_store):
    store = open_store(full_store)
    starts, counts = store.token_start.values, store.token_count.values

    def padding(chunks_per_window: int) -> float:
        slots = real = 0
        for window in plan_windows(starts, counts, CHUNK, chunks_per_window):
            for batch in plan_batches(window.examples, counts, 3):
                slots += len(batch) * int(counts[batch].max())
                real += int(counts[batch].sum())
        return 1 - real / slots

    # One chunk per sort forwards the examples straddling chunk edges twice as well.
    assert padding(100) < padding(1)


def _chunk_files(url: str) -> dict[str, bytes]:
    root = Path(url)
    files = [*root.glob("activations/c/**/*"), *root.glob("written/c/**/*")]
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def two_chunk_store(tmp_path_factory, checkpoints, probe) -> str:
    """A store extracted in one go with two chunks per window."""
    url = str(tmp_path_factory.mktemp("windows") / "activations.zarr")
    make_store(url, checkpoints, probe)
    extract_all(url, checkpoints, window_bytes=TWO_CHUNKS)
    return url


def test_resume_after_failure_is_byte_identical(
    tmp_path, two_chunk_store, checkpoints, probe, monkeypatch
):
    url = str(tmp_path / "activations.zarr")
    make_store(url, checkpoints, probe)
    real_run_window = extract_run._run_window
    fail_at = 3

    def failing(model, window, *args):
        if fail_at in window.chunks:
            raise RuntimeError("injected failure")
        return real_run_window(model, window, *args)

    monkeypatch.setattr(extract_run, "_run_window", failing)
    final = checkpoints["final"]
    with pytest.raises(RuntimeError, match="injected"):
        extract_checkpoint(url, "final", final, batch_size=3, device="cpu", window_bytes=TWO_CHUNKS)
    missing = missing_chunks(url, "final")
    chunks = -(-open_store(two_chunk_store).sizes["token"] // CHUNK)
    assert missing == list(range(2, chunks))  # the window before the failure is kept

    calls = []
    real_forward = extract_run.forward_hidden_states

    def counting(model, input_ids, attention_mask):
        calls.append(input_ids.shape[0])
        return real_forward(model, input_ids, attention_mask)

    monkeypatch.setattr(extract_run, "_run_window", real_run_window)
    monkeypatch.setattr(extract_run, "forward_hidden_states", counting)
    store = open_store(url, allow_partial=True)
    starts, counts = store.token_start.values, store.token_count.values

    def needed(window, ex: int) -> bool:
        """Whether one of the example's tokens inside the window is in a missing chunk."""
        lo, hi = max(starts[ex], window.start), min(starts[ex] + counts[ex], window.stop)
        return bool(set(range(lo // CHUNK, (hi - 1) // CHUNK + 1)) & set(missing))

    expected = [
        len(batch)
        for window in plan_windows(starts, counts, CHUNK, 2)
        for batch in plan_batches(window.examples, counts, 3)
        if any(needed(window, ex) for ex in batch)
    ]
    written = extract_checkpoint(
        url, "final", final, batch_size=3, device="cpu", window_bytes=TWO_CHUNKS
    )
    assert written == len(missing) and calls == expected  # only batches of missing chunks
    calls.clear()
    assert extract_checkpoint(url, "final", final, device="cpu") == 0
    assert calls == []
    for label in ("base", "step-000010"):
        extract_checkpoint(
            url, label, checkpoints[label], batch_size=3, device="cpu", window_bytes=TWO_CHUNKS
        )
    assert _chunk_files(url) == _chunk_files(two_chunk_store)


def test_refuses_other_tokenizer_shape_or_weights(tmp_path, checkpoints, probe):
    url = str(tmp_path / "activations.zarr")
    make_store(url, checkpoints, probe)
    other_vocab = tmp_path / "vocab"
    shutil.copytree(checkpoints["final"], other_vocab)
    other_tokenizer = load_tokenizer(str(other_vocab))
    other_tokenizer.add_tokens(["extra"])
    other_tokenizer.save_pretrained(other_vocab)
    with pytest.raises(StoreMismatchError, match="tokenizer"):
        extract_checkpoint(url, "final", other_vocab, device="cpu")

    from transformers import BertConfig, BertModel

    deeper = tmp_path / "deeper"
    config = BertConfig.from_pretrained(checkpoints["final"], num_hidden_layers=3)
    BertModel(config).save_pretrained(deeper)
    load_tokenizer(str(checkpoints["final"])).save_pretrained(deeper)
    with pytest.raises(StoreMismatchError, match="4 layers x hidden 32.*3 x 32"):
        extract_checkpoint(url, "final", deeper, device="cpu")
    with pytest.raises(StoreMismatchError, match="changed since the store"):
        extract_checkpoint(url, "final", checkpoints["base"], device="cpu")
    with pytest.raises(StoreMismatchError, match="architecture"):
        make_store(str(tmp_path / "b.zarr"), {**checkpoints, "final": deeper}, probe)


def _make_run(root: Path, checkpoints: dict, probe) -> RunDir:
    """A run directory as the data and fine-tuning stages leave it."""
    run = RunDir(str(root))
    texts, labels = probe
    pairs = enumerate(zip(texts, labels, strict=True))
    rows = [{"text": t, "label": v, "id": i} for i, (t, v) in pairs]
    run.write_text("\n".join(json.dumps(r) for r in rows), "data", "probe.jsonl")
    run.write_text(json.dumps({"identity": {"name": "toy", "sha256": "x"}}), "data", "dataset.json")
    for step, (label, folder) in enumerate(checkpoints.items()):
        shutil.copytree(folder, root / "checkpoints" / label)
        run.write_text(json.dumps({"step": step * 10}), "checkpoints", label, "metrics.json")
    return run


def test_run_level_api_and_prefect_tasks(tmp_path, checkpoints, probe, full_store):
    run = _make_run(tmp_path / "run", checkpoints, probe)
    cfg = RunConfig(data={"max_length": 64}, extract={"token_chunk": CHUNK, "batch_size": 3})
    generation = create_store_for_run(run, cfg, list(LABELS))
    assert create_store_task.fn(run, cfg, list(LABELS)) == generation  # idempotent
    assert not extraction_complete(run)
    chunks = len(missing_chunks(run.activations(), "base"))
    assert chunks == -(-open_store(full_store).sizes["token"] // CHUNK)
    assert extract_checkpoint_for_run(run, cfg, "base") == chunks
    for label in LABELS[1:]:
        assert extract_checkpoint_task.fn(run, cfg, label) == chunks
    assert extraction_complete(run)
    assert extract_checkpoint_task.fn(run, cfg, "final") == 0
    ds = open_store(run.activations())
    assert ds.attrs["config_hash"] == cfg.config_hash()
    assert ds.attrs["dataset"]["probe_rows"] == len(probe[0])
    np.testing.assert_array_equal(ds.activations.values, open_store(full_store).activations.values)


def test_extract_into_an_fsspec_store(checkpoints, probe, full_store):
    url = "memory://layerdrift-extract/activations.zarr"
    subset = {"final": checkpoints["final"]}
    make_store(url, subset, probe)
    extract_all(url, subset)
    np.testing.assert_array_equal(
        open_store(url).activations.sel(checkpoint="final").values,
        open_store(full_store).activations.sel(checkpoint="final").values,
    )


def test_retries_only_transient_errors():
    from layerdrift.storage.lock import StoreLockedError
    from layerdrift.tasks.retry import retry_unless_bad_input as _transient

    class State:
        def __init__(self, error):
            self.error = error

        def result(self, raise_on_failure=True):
            return self.error

    assert _transient(None, None, State(OSError("connection reset")))
    assert _transient(None, None, State(StoreLockedError("busy")))
    assert not _transient(None, None, State(StoreMismatchError("other tokenizer")))
    assert not _transient(None, None, State(FileNotFoundError("no checkpoint")))


def test_writer_error_stops_extraction_and_frees_lock(tmp_path, checkpoints, probe, monkeypatch):
    from layerdrift.storage.activations import StoreWriter, writer_lock

    url = str(tmp_path / "activations.zarr")
    make_store(url, {"final": checkpoints["final"]}, probe)
    real_write = StoreWriter.write

    def flaky(self, checkpoint, chunk, data):
        if chunk == 2:
            raise OSError("disk full")
        return real_write(self, checkpoint, chunk, data)

    monkeypatch.setattr(StoreWriter, "write", flaky)
    with pytest.raises(OSError, match="disk full"):  # one chunk per window: written in order
        extract_checkpoint(
            url, "final", checkpoints["final"], batch_size=3, device="cpu", window_bytes=1
        )
    missing = missing_chunks(url, "final")
    assert missing[0] == 2 and 0 not in missing and 1 not in missing
    writer_lock(url, checkpoint="final").acquire().release()  # the failed writer let go


KILLED_WRITER = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
import layerdrift.tasks.extract.run as run
real = run._run_window
def slow(*args):
    time.sleep(0.4)
    return real(*args)
run._run_window = slow
run.extract_checkpoint({url!r}, "final", {model!r}, batch_size=3, device="cpu", window_bytes=1)
"""


def test_killed_extraction_resumes_to_identical_bytes(tmp_path, checkpoints, probe):
    import os
    import signal
    import subprocess
    import sys
    import time

    url = str(tmp_path / "activations.zarr")
    make_store(url, checkpoints, probe)
    total = len(missing_chunks(url, "final"))
    root = Path(__file__).resolve().parents[1]
    script = KILLED_WRITER.format(
        root=str(root), tests=str(root / "tests"), url=url, model=str(checkpoints["final"])
    )
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    deadline = time.monotonic() + 240
    while len(missing_chunks(url, "final")) > total - 2 and time.monotonic() < deadline:
        assert child.poll() is None, "the writer ended before it could be killed"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = missing_chunks(url, "final")
    assert 0 < len(left) <= total - 2
    assert Path(f"{url}.locks/final.lock").exists()  # the killed writer's lease stays behind
    final = checkpoints["final"]
    rerun = extract_checkpoint(url, "final", final, device="cpu", batch_size=3, window_bytes=1)
    assert rerun == len(left)
    reference_url = str(tmp_path / "reference.zarr")
    make_store(reference_url, checkpoints, probe)
    extract_checkpoint(reference_url, "final", final, device="cpu", batch_size=3, window_bytes=1)
    mine, reference = _chunk_files(url), _chunk_files(reference_url)
    final = [k for k in reference if k.startswith(("activations/c/2/", "written/c/2/"))]
    assert final and all(mine[k] == reference[k] for k in final)
