"""The fine-tuning stage on a tiny BERT: schedule, batches, accuracy, checkpoints, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from layerdrift.config import RunConfig
from layerdrift.storage.checkpoints import (
    checkpoint_complete,
    list_checkpoints,
    local_checkpoint_path,
    read_checkpoint_metrics,
)
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data import prepare_data
from layerdrift.tasks.finetune import (
    CheckpointMismatchError,
    checkpointing,
    finetune,
    finetune_complete,
    planned_checkpoints,
    train,
)
from layerdrift.tasks.finetune.batches import bucketed_batches, pad_batch
from layerdrift.tasks.finetune.evaluate import evaluate

LABELS = ["base", "step-000015", "step-000030", "final"]  # 240 / 16 = 15 steps per epoch


def tiny_config(root: str, model: Path, csv: Path, **finetune) -> RunConfig:
    """240 training texts, 4 epochs of 15 steps, checkpoints at 0, 1/4, 1/2 and the end."""
    finetune = {
        "epochs": 4.0,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "warmup_fraction": 0.1,
        "checkpoints": [0.0, 0.25, 0.5, 1.0],
    } | finetune
    data = {"dataset": f"csv:{csv}", "train_size": 240, "val_size": 100, "probe_size": 60,
            "max_length": 32}  # fmt: skip
    return RunConfig(
        name="tiny", runs_root=root, model=str(model), device="cpu", data=data, finetune=finetune
    )


def prepared(root: str, model: Path, csv: Path, **finetune) -> tuple[RunDir, RunConfig]:
    cfg = tiny_config(root, model, csv, **finetune)
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    return run, cfg


def final_weights(run: RunDir) -> dict[str, torch.Tensor]:
    return load_file(local_checkpoint_path(run, "final") / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, separable_csv):
    """One uninterrupted fine-tune that the other tests compare against."""
    root = str(tmp_path_factory.mktemp("reference"))
    run, cfg = prepared(root, tiny_model_dir, separable_csv)
    return run, cfg, finetune(run, cfg)


def test_planned_checkpoints_rounding(tmp_path, tiny_model_dir, separable_csv):
    cfg = tiny_config(str(tmp_path), tiny_model_dir, separable_csv, epochs=1.5, batch_size=7,
                      checkpoints=[0.1, 0.33, 0.5, 0.501])  # fmt: skip
    total = math.ceil(1.5 * math.ceil(100 / 7))  # 15 steps per epoch -> 23 steps
    assert total == 23
    assert planned_checkpoints(cfg, 100) == [
        (0, "base"), (2, "step-000002"), (8, "step-000008"), (12, "step-000012"), (23, "final")
    ]  # fmt: skip


def test_bucketed_batches_cover_every_example_once():
    lengths = np.random.default_rng(0).integers(3, 60, size=1000)
    batches = bucketed_batches(lengths, 16, torch.Generator().manual_seed(1))
    assert len(batches) == math.ceil(1000 / 16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = bucketed_batches(lengths, 16, torch.Generator().manual_seed(1))
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))
    # Bucketing cuts padding well below that of random batches of the same size.
    padded = sum(len(b) * lengths[b].max() for b in batches)
    order = np.random.default_rng(1).permutation(1000)
    random_padded = sum(16 * lengths[order[i : i + 16]].max() for i in range(0, 1000, 16))
    assert padded < 0.8 * random_padded


def test_pad_batch_right_and_left():
    encoded = {"input_ids": [[5, 6, 7], [8]], "attention_mask": [[1, 1, 1], [1]]}
    right = pad_batch(encoded, [0, 1], pad_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_batch(encoded, [1, 0], pad_id=9, side="left")
    assert left["input_ids"].tolist() == [[9, 9, 8], [5, 6, 7]]


def test_evaluate_matches_unpadded_forward(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["the movie was good", "awful", "a very boring plot and the end", "great film"]
    labels = np.array([1, 0, 0, 1])
    encoded = dict(tokenizer(texts))
    got = evaluate(model, encoded, labels, 3, torch.device("cpu"), 0, 2)
    assert model.training  # evaluate hands the model back in training mode
    model.eval()
    with torch.no_grad():  # reference: one example at a time, no padding at all
        logits = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)).item()
    predicted = logits.argmax(-1).numpy()
    assert got["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert got["val_accuracy"] == pytest.approx((predicted == labels).mean())
    expected = np.zeros((2, 2), dtype=int)
    np.add.at(expected, (labels, predicted), 1)
    assert got["confusion_matrix"] == expected.tolist()


def test_finetune_reaches_accuracy_with_checkpoints(reference):
    run, cfg, labels = reference
    assert labels == LABELS
    assert list_checkpoints(run) == LABELS
    assert finetune_complete(run, cfg)
    metrics = {label: read_checkpoint_metrics(run, label) for label in labels}
    assert [metrics[label]["step"] for label in labels] == [0, 15, 30, 60]
    assert [metrics[label]["epoch"] for label in labels] == [0.0, 1.0, 2.0, 4.0]
    assert metrics["base"]["train_loss"] is None
    assert all(metrics[label]["train_loss"] > 0 for label in labels[1:])
    assert metrics["final"]["val_accuracy"] > 0.9
    assert metrics["final"]["val_loss"] < metrics["base"]["val_loss"]
    matrix = np.array(metrics["final"]["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == 100
    assert np.trace(matrix) / 100 == pytest.approx(metrics["final"]["val_accuracy"])
    folder = local_checkpoint_path(run, "final")
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    states = sorted(p.name for p in (folder.parent / ".train-state").iterdir())
    assert states == ["final.pt"]  # older training states are pruned


def test_checkpoints_differ_and_base_is_the_pretrained_body(reference, tiny_model_dir):
    run, _, labels = reference
    base = load_file(local_checkpoint_path(run, "base") / "model.safetensors")
    pretrained = load_file(tiny_model_dir / "model.safetensors")
    for name, value in pretrained.items():
        torch.testing.assert_close(base[name], value, rtol=0, atol=0)
    final = final_weights(run)
    assert not torch.equal(final["bert.encoder.layer.1.output.dense.weight"],
                           base["bert.encoder.layer.1.output.dense.weight"])  # fmt: skip


def test_rerun_of_a_complete_finetune_does_nothing(reference, monkeypatch):
    run, cfg, labels = reference
    monkeypatch.setattr(train, "_Trainer", None)  # any attempt to train would fail
    assert finetune(run, cfg) == labels


def test_resume_after_stop_gives_the_same_weights(tmp_path, reference, tiny_model_dir,
                                                  separable_csv, caplog):  # fmt: skip
    run, cfg = prepared(str(tmp_path), tiny_model_dir, separable_csv)
    assert finetune(run, cfg, stop_after=2) == LABELS[:2]
    assert not finetune_complete(run, cfg)
    torch.manual_seed(12345)  # as in a fresh process: the RNG state must come from the run
    base_written = (Path(run.path("checkpoints", "base")) / "metrics.json").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="layerdrift.tasks.finetune"):
        assert finetune(run, cfg) == LABELS
    assert "from checkpoint step-000015" in caplog.text
    assert (Path(run.path("checkpoints", "base")) / "metrics.json").stat().st_mtime_ns == (
        base_written
    )
    expected = final_weights(reference[0])
    for name, value in final_weights(run).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)
    for label in LABELS:
        assert read_checkpoint_metrics(run, label)["val_loss"] == pytest.approx(
            read_checkpoint_metrics(reference[0], label)["val_loss"], abs=1e-6
        )


def test_crash_inside_a_checkpoint_resumes_exactly(tmp_path, reference, tiny_model_dir,
                                                  separable_csv, monkeypatch, caplog):  # fmt: skip
    """A failure after the third checkpoint's weights but before its metrics.json."""
    run, cfg = prepared(str(tmp_path), tiny_model_dir, separable_csv)
    real_save, calls = torch.save, []

    def failing_save(obj, target, *args, **kwargs):
        calls.append(target)
        if len(calls) == 3:
            raise RuntimeError("injected failure")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="injected"):
        finetune(run, cfg)
    monkeypatch.setattr(checkpointing.torch, "save", real_save)
    assert list_checkpoints(run) == LABELS[:2]
    assert not checkpoint_complete(run, "step-000030")
    assert (Path(run.path("checkpoints", "step-000030")) / "model.safetensors").is_file()
    with caplog.at_level("INFO", logger="layerdrift.tasks.finetune"):
        assert finetune(run, cfg) == LABELS
    assert "from checkpoint step-000015" in caplog.text
    expected = final_weights(reference[0])
    for name, value in final_weights(run).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)


def test_deleted_checkpoint_is_rebuilt(tmp_path, reference, tiny_model_dir, separable_csv):
    import shutil

    run, cfg = prepared(str(tmp_path), tiny_model_dir, separable_csv)
    finetune(run, cfg)
    shutil.rmtree(run.path("checkpoints", "step-000015"))
    assert not finetune_complete(run, cfg)
    assert finetune(run, cfg) == LABELS
    torch.testing.assert_close(
        load_file(local_checkpoint_path(run, "step-000015") / "model.safetensors"),
        load_file(local_checkpoint_path(reference[0], "step-000015") / "model.safetensors"),
        rtol=0, atol=1e-6,
    )  # fmt: skip


def test_other_config_in_the_same_run_is_refused(reference, tiny_model_dir, separable_csv):
    run, cfg, _ = reference
    changed = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"epochs": 5.0})})
    assert not finetune_complete(run, changed)
    with pytest.raises(CheckpointMismatchError, match="use a new run name"):
        finetune(run, changed)


def test_remote_run_on_fsspec_url(tiny_model_dir, separable_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERDRIFT_CACHE_DIR", str(tmp_path / "cache"))
    run, cfg = prepared("memory://ft-test", tiny_model_dir, separable_csv, epochs=1.0)
    labels = finetune(run, cfg, stop_after=2)
    assert labels == ["base", "step-000004"] and not run.is_local
    assert finetune(run, cfg) == ["base", "step-000004", "step-000008", "final"]
    assert list_checkpoints(run) == ["base", "step-000004", "step-000008", "final"]
    local = local_checkpoint_path(run, "final")
    assert local.is_relative_to(tmp_path / "cache")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(local)
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_remote_checkpoint_cache_follows_the_remote(tmp_path, monkeypatch):
    """Only complete folders are listed (by step); a rewritten checkpoint is fetched again."""
    monkeypatch.setenv("LAYERDRIFT_CACHE_DIR", str(tmp_path / "cache"))
    run = RunDir("memory://cache-test/run")

    def put(label: str, step: int, weights: bytes, complete: bool = True) -> None:
        run.fs.pipe(run.path("checkpoints", label, "model.safetensors"), weights)
        if complete:
            run.write_text(json.dumps({"step": step}), "checkpoints", label, "metrics.json")

    put("final", 9, b"v1")
    put("base", 0, b"b")
    put("step-000004", 4, b"s")
    put("step-000007", 7, b"x", complete=False)
    assert list_checkpoints(run) == ["base", "step-000004", "final"]
    first = local_checkpoint_path(run, "final")
    assert (first / "model.safetensors").read_bytes() == b"v1"
    put("final", 9, b"v2")  # same metrics: the cached copy is kept
    assert (local_checkpoint_path(run, "final") / "model.safetensors").read_bytes() == b"v1"
    run.write_text(json.dumps({"step": 9, "rebuilt": True}), "checkpoints", "final", "metrics.json")
    assert (local_checkpoint_path(run, "final") / "model.safetensors").read_bytes() == b"v2"
    with pytest.raises(FileNotFoundError, match="'step-000007'.*missing or incomplete"):
        local_checkpoint_path(run, "step-000007")


def test_the_optimizer_is_fused_adamw_with_decay_on_matrices_only(tiny_model_dir):
    """AdamW, fused on the CPU, weight decay on matrices and none on biases and norms."""
    from layerdrift.config import RunConfig
    from layerdrift.tasks.finetune.train import build_optimizer
    from layerdrift.tasks.modeling import load_classifier, load_tokenizer
    from layerdrift.tasks.optimizers import fused_supported

    model = load_classifier(tiny_model_dir, load_tokenizer(str(tiny_model_dir)), ["a", "b"])
    cfg = RunConfig(finetune={"weight_decay": 0.05, "learning_rate": 3e-4})
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert not fused_supported([torch.zeros(3, dtype=torch.long)])
