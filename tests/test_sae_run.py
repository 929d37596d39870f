"""The run-level SAE stage on a tiny run: train, evaluate into results.zarr, completeness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny_runs
import torch
import zarr
from factories import (
    make_activation_store,
    make_tiny_bert,
    separable_texts,
    set_store_generation,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from layerdrift.config import RunConfig
from layerdrift.storage.results import open_result
from layerdrift.storage.rundir import RunDir
from layerdrift.storage.saes import read_cfg
from layerdrift.tasks.dictionary import layerdrift_info
from layerdrift.tasks.sae import (
    SAE_METRICS,
    evaluate_saes_for_run,
    sae_complete,
    saes_evaluated,
    train_sae_for_run,
)


@pytest.fixture(autouse=True)
def single_thread():
    with tiny_runs.one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run with checkpoints base/final (tiny BERTs) and their activation store."""
    root = tmp_path_factory.mktemp("run")
    run = RunDir(str(root))
    frame = separable_texts(80)
    texts, labels = frame.text.tolist(), (frame.label == "pos").astype(int).tolist()
    per_checkpoint = []
    for seed, label in enumerate(["base", "final"]):
        folder = make_tiny_bert(root / "checkpoints" / label, seed=seed)
        (folder / "metrics.json").write_text(json.dumps({"step": seed * 10}))
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        batch = AutoTokenizer.from_pretrained(folder)(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            hidden = torch.stack(model(**batch, output_hidden_states=True).hidden_states)
        real = batch["attention_mask"].bool()
        per_checkpoint.append(hidden[:, real].numpy())  # [layer, token, hidden]
        counts = real.sum(dim=1).tolist()
    acts = np.stack(per_checkpoint).astype(np.float16)
    url = make_activation_store(run.activations(), acts, counts, labels=labels, token_chunk=128)
    group = zarr.open_group(url, mode="r+")
    group["text"][:] = np.array(texts, dtype=object)
    group.attrs.update(checkpoints=["base", "final"], generation="test")
    zarr.consolidate_metadata(url)
    return run


def _config(tmp_run: RunDir) -> RunConfig:
    sae = {"batch_size": 128, "token_budget": 128 * 6, "layers": [0, 2], "k": 4}
    sae |= {"heldout_fraction": 0.25, "checkpoint_every": 3, "expansion_factor": 2}
    return RunConfig(runs_root=str(tmp_run.url), device="cpu", sae=sae)


def test_train_and_evaluate_saes_for_run(tiny_run):
    cfg = _config(tiny_run)
    assert not sae_complete(tiny_run, "base", 0)
    for checkpoint in ("base", "final"):
        for layer in (0, 2):
            url = train_sae_for_run(tiny_run, cfg, checkpoint, layer)
            assert url == tiny_run.sae(checkpoint, layer)
            assert sae_complete(tiny_run, checkpoint, layer)
    assert not saes_evaluated(tiny_run)
    out = evaluate_saes_for_run(tiny_run, cfg)
    assert sorted(out["saes"]) == ["base/0", "base/2", "final/0", "final/2"]
    assert saes_evaluated(tiny_run)

    metrics = open_result(tiny_run.results(), "sae_metrics")["sae_metrics"]
    assert metrics.dims == ("checkpoint", "layer", "metric")
    assert list(metrics.metric.values) == list(SAE_METRICS)
    l0 = metrics.sel(metric="l0").values
    assert np.all(l0 <= 4.0 + 1e-9) and np.all(l0 > 0)
    fvu = metrics.sel(metric="fvu").values
    assert np.all((fvu > 0) & (fvu < 1.5))
    assert np.isfinite(metrics.sel(metric="loss_recovered").values).all()
    density = open_result(tiny_run.results(), "latent_density")["latent_density"]
    assert density.dims == ("checkpoint", "layer", "bin")
    assert (density.sum("bin").values == 64).all()  # d_sae = 2 * 32 latents each
    recovery = open_result(tiny_run.results(), "sae_recovery")["sae_recovery"]
    assert {"loss_clean", "loss_sae", "loss_mean"} <= set(recovery.quantity.values.tolist())


def test_a_rebuilt_store_makes_saes_stale(tiny_run):
    cfg = _config(tiny_run)
    train_sae_for_run(tiny_run, cfg, "base", 0)
    evaluate_saes_for_run(tiny_run, cfg)
    assert layerdrift_info(read_cfg(tiny_run.sae("base", 0)))["store_generation"] == "test"
    assert sae_complete(tiny_run, "base", 0) and saes_evaluated(tiny_run)
    try:
        set_store_generation(tiny_run.activations(), "rebuilt")
        assert not sae_complete(tiny_run, "base", 0)
        assert not saes_evaluated(tiny_run)
        train_sae_for_run(tiny_run, cfg, "base", 0)
        assert layerdrift_info(read_cfg(tiny_run.sae("base", 0)))["store_generation"] == "rebuilt"
        assert sae_complete(tiny_run, "base", 0)
    finally:
        set_store_generation(tiny_run.activations(), "test")


def test_prefect_tasks_retry_only_transient_errors():
    from prefect.states import Failed

    from layerdrift.tasks.retry import retry_unless_bad_input as _transient
    from layerdrift.tasks.sae import evaluate_saes_task, train_sae_task

    assert train_sae_task.retries == 2 and evaluate_saes_task.retries == 1
    assert train_sae_task.fn is not None
    assert not _transient(None, None, Failed(data=ValueError("bad batch size")))
    assert _transient(None, None, Failed(data=OSError("connection reset")))
    assert not _transient(None, None, Failed(data=FileNotFoundError("no store")))
    assert train_sae_task.retry_condition_fn is _transient
