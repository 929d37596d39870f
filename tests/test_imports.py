"""Bring your own checkpoints: given folders, a Trainer output folder, PEFT adapters.

Imported checkpoints must give the same store and similarity as the run that fine-tuned them;
a Trainer folder imports in step order with its logged metrics; an adapter merges to the
activations of the adapted model; checkpoints of different base models are refused up front.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_runs
import torch
import xarray as xr
from factories import VOCAB, make_tiny_bert

from layerdrift.config import RunConfig
from layerdrift.storage import RunDir
from layerdrift.storage.results import open_result
from layerdrift.tasks.imports import (
    CheckpointImportError,
    GivenCheckpoint,
    given_checkpoints,
    import_checkpoints,
    load_given,
)
from layerdrift.tasks.modeling import (
    forward_hidden_states,
    load_encoder,
    load_tokenizer,
    tokenizer_fingerprint,
)
from layerdrift.tasks.preflight import preflight


def _config(model_dir: Path, csv: Path, root: Path, **fields) -> RunConfig:
    values = tiny_runs.tiny_config(model_dir, csv)
    return RunConfig.model_validate({**values, "runs_root": str(root), **fields})


def test_imported_checkpoints_match_the_run_that_finetuned_them(tiny_run, tmp_path):
    config, outcome = tiny_run
    from layerdrift.flows.pipeline import pipeline

    source = RunDir(outcome["run_dir"])
    given = {label: source.path("checkpoints", label) for label in outcome["checkpoints"]}
    values = config.model_dump()
    values |= {
        "name": "imported",
        "runs_root": str(tmp_path),
        "checkpoints": given,
        "similarity": {**values["similarity"], "probes": False, "bootstrap_resamples": 0},
        "sae": {**values["sae"], "enabled": False},
        "report": {**values["report"], "enabled": False},
    }
    with tiny_runs.one_thread():
        result = pipeline(RunConfig.model_validate(values))
    assert result["checkpoints"] == outcome["checkpoints"]
    assert result["stages"]["import"] == "ran"
    assert result["stages"]["finetune"].startswith("skipped")
    mine, theirs = RunDir(result["run_dir"]), source
    a = xr.open_zarr(mine.activations())
    b = xr.open_zarr(theirs.activations())
    assert list(a.checkpoint.values) == list(b.checkpoint.values)
    np.testing.assert_array_equal(a.activations.values, b.activations.values)
    sim_a = open_result(mine.results(), "similarity")["similarity"]
    sim_b = open_result(theirs.results(), "similarity")["similarity"]
    np.testing.assert_allclose(sim_a.values, sim_b.values, rtol=1e-6, atol=1e-7)
    metrics = json.loads(Path(mine.path("checkpoints", "final", "metrics.json")).read_text())
    assert metrics["imported_from"] == given["final"] and metrics["adapter"] is False
    with tiny_runs.one_thread():
        again = pipeline(RunConfig.model_validate(values))
    assert again["stages"]["import"] == "cached"
    assert again["stages"]["importance"].startswith("skipped (checkpoints are imported")
    from layerdrift.flows.status import run_status

    states = {(stage, piece): state for stage, piece, state in run_status(mine.url)}
    assert states[("importance", "layer_reversion")].startswith("skipped")


def _trainer_folder(root: Path, base: Path) -> Path:
    """A Trainer output_dir: checkpoint-{2,10,5}/ (saved out of order) and trainer_state.json."""
    out = root / "trainer-out"
    for step in (10, 2, 5):
        make_tiny_bert(out / f"checkpoint-{step}", seed=step)
        config_file = out / f"checkpoint-{step}" / "config.json"
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**config, "_name_or_path": str(base)}))
    history = [{"step": s, "loss": 1.0 / s, "epoch": s / 10} for s in (2, 5, 10)]
    history += [{"step": 5, "eval_loss": 0.5, "eval_accuracy": 0.75}]
    (out / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (out / "runs").mkdir()  # Trainer's logging folder: not a checkpoint
    return out


def test_trainer_folder_imports_in_step_order(tiny_model_dir, separable_csv, tmp_path):
    folder = _trainer_folder(tmp_path, tiny_model_dir)
    cfg = _config(tiny_model_dir, separable_csv, tmp_path / "runs", checkpoints_from=str(folder))
    items = given_checkpoints(cfg)
    assert [i.label for i in items] == ["base", "step-000002", "step-000005", "final"]
    assert [i.step for i in items] == [0, 2, 5, 10]
    assert items[0].source == str(tiny_model_dir)  # the base the checkpoints name
    assert items[2].metrics == {
        "train_loss": 0.2,
        "epoch": 0.5,
        "val_loss": 0.5,
        "val_accuracy": 0.75,
    }
    assert cfg.sae.checkpoints == ("base", "final")
    run = RunDir(cfg.run_url)
    assert import_checkpoints(run, cfg) == ["base", "step-000002", "step-000005", "final"]
    metrics = json.loads(Path(run.path("checkpoints", "step-000005", "metrics.json")).read_text())
    assert metrics["step"] == 5 and metrics["val_accuracy"] == 0.75
    saved = load_encoder(run.path("checkpoints", "final"), torch.device("cpu"))
    original = load_encoder(folder / "checkpoint-10", torch.device("cpu"))
    for (name, p), (_, q) in zip(
        saved.named_parameters(), original.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name


def test_peft_adapter_gives_the_merged_models_activations(tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    base = load_encoder(tiny_model_dir, torch.device("cpu"))
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False
    )
    torch.manual_seed(3)  # init_lora_weights=False draws both factors at random
    adapted = peft.get_peft_model(base, lora).eval()
    adapter_dir = tmp_path / "adapter"
    adapted.save_pretrained(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(tiny_model_dir)}))
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        expected = forward_hidden_states(adapted, ids, mask)  # (layer, 1, 5, hidden)
        plain = forward_hidden_states(load_encoder(tiny_model_dir, torch.device("cpu")), ids, mask)
    merged, tokenizer = load_given(GivenCheckpoint("lora", str(adapter_dir), 1))
    merged.save_pretrained(tmp_path / "merged", safe_serialization=True)
    reloaded = load_encoder(tmp_path / "merged", torch.device("cpu"))
    with torch.inference_mode():
        got = forward_hidden_states(reloaded, ids, mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[1:] - plain[1:]).abs().max() > 1e-3  # the adapter changed the layers
    # The adapter saved no tokenizer: it is its base's.
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(
        load_tokenizer(str(tiny_model_dir))
    )


def test_checkpoints_of_another_base_are_refused(tiny_model_dir, separable_csv, tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    wide = tmp_path / "wide"
    shutil.copytree(tiny_model_dir, wide, ignore=shutil.ignore_patterns("*.safetensors"))
    config = BertConfig.from_pretrained(wide)
    BertModel(BertConfig(**{**config.to_dict(), "hidden_size": 48})).save_pretrained(wide)
    other_vocab = tmp_path / "other-vocab"
    shutil.copytree(tiny_model_dir, other_vocab)
    vocab = {token: index for index, token in enumerate([*VOCAB, "zebra"])}
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(other_vocab)
    cfg = _config(
        tiny_model_dir,
        separable_csv,
        tmp_path / "runs",
        checkpoints={"wide": str(wide), "vocab": str(other_vocab)},
    )
    with pytest.raises(CheckpointImportError) as error:
        preflight(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert "'wide' has hidden size 48 (vs 32)" in message
    assert "'vocab' has tokenizer" in message
    assert not Path(cfg.run_url).exists()


def test_checkpoint_labels_are_validated(tiny_model_dir, separable_csv, tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint labels \['a/b'\] must be letters"):
        _config(tiny_model_dir, separable_csv, tmp_path, checkpoints={"a/b": "x"})
    with pytest.raises(ValueError, match="'base' is the reference and must come first"):
        _config(tiny_model_dir, separable_csv, tmp_path, checkpoints={"ft": "x", "base": "y"})
    cfg = _config(tiny_model_dir, separable_csv, tmp_path, checkpoints={"ft": "x"})
    assert cfg.sae.checkpoints == ("base", "ft") and cfg.features.finetuned == "ft"
    assert [(i.label, i.source) for i in given_checkpoints(cfg)] == [
        ("base", str(tiny_model_dir)),
        ("ft", "x"),
    ]


def test_checkpoints_table_in_toml_keeps_its_order(tmp_path):
    from layerdrift.config import build_config

    toml = tmp_path / "study.toml"
    toml.write_text('[checkpoints]\nbase = "minilm-l6"\nzeta = "./z"\nalpha = "./a"\n')
    cfg = build_config("quick", toml, {"checkpoints": {"beta": "./b"}})
    assert list(cfg.checkpoints) == ["base", "zeta", "alpha", "beta"]
    assert cfg.final_label == "beta" and cfg.sae.checkpoints == ("base", "beta")
    assert cfg.imports_checkpoints
    with pytest.raises(ValueError, match="holds only the reference `base`"):
        build_config("quick", None, {"checkpoints": {"base": "minilm-l6"}})
