"""LoRA fine-tuning (``finetune.method = "lora"``) on a tiny BERT and a tiny GPT-2.

What is checked, against peft itself and a direct forward pass:

- during training only the LoRA matrices and the head change (every base weight is bitwise
  the same, before any merge);
- each saved checkpoint is exactly peft's own ``merge_and_unload()`` of the adapter saved
  with it, in the layout of full fine-tuning (same tensor names), and metrics.json records
  the method, the rank and the trainable parameters (counted by hand);
- data → fine-tune → extract gives a store whose final activations equal an
  ``output_hidden_states`` forward pass of that merged model;
- a LoRA run stopped half-way resumes to the same weights.

The preflight errors are in test_preflight.py, the defaults of every family in
test_families.py, the settings and hashes in test_config.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from families import make_family_model
from safetensors.torch import load_file

from layerdrift.config import RunConfig
from layerdrift.storage.activations import open_store
from layerdrift.storage.checkpoints import local_checkpoint_path, read_checkpoint_metrics
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data import prepare_data, read_split
from layerdrift.tasks.extract import create_store_for_run, extract_checkpoint_for_run
from layerdrift.tasks.finetune import finetune, train
from layerdrift.tasks.finetune.checkpointing import load_train_state
from layerdrift.tasks.modeling import load_classifier, load_tokenizer

RANK = 4
# The family's attention projections and head, spelled out here (not taken from the code).
FAMILIES = {
    "bert": {"targets": ["query", "value"], "head": ["bert.pooler", "classifier"]},
    "gpt2": {"targets": ["c_attn"], "head": ["score"]},
}
LABELS = ["base", "step-000002", "final"]  # 64 / 16 = 4 steps, a checkpoint at the half


def lora_config(root, model, csv, **lora) -> RunConfig:
    data = {"dataset": f"csv:{csv}", "train_size": 64, "val_size": 32, "probe_size": 16,
            "max_length": 24}  # fmt: skip
    finetune = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-2, "checkpoints": [0.5],
                "method": "lora", "lora": {"rank": RANK, **lora}}  # fmt: skip
    return RunConfig(
        name="lora", runs_root=str(root), model=str(model), device="cpu", data=data,
        finetune=finetune, extract={"token_chunk": 64, "dtype": "float32"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir) -> dict:
    return {
        "bert": tiny_model_dir,
        "gpt2": make_family_model("gpt2", tmp_path_factory.mktemp("gpt2")),
    }


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, models, separable_csv) -> dict:
    """Per family: a LoRA run through data, fine-tuning and extraction (in-process)."""
    runs = {}
    for family, model in models.items():
        cfg = lora_config(tmp_path_factory.mktemp(f"lora-{family}"), model, separable_csv)
        run = RunDir(cfg.run_url)
        prepare_data(run, cfg)
        labels = finetune(run, cfg)
        create_store_for_run(run, cfg, labels)
        for label in labels:
            extract_checkpoint_for_run(run, cfg, label)
        runs[family] = (run, cfg, labels)
    return runs


def peft_merged(family: str, run: RunDir, cfg: RunConfig, label: str) -> torch.nn.Module:
    """peft's own merge of the adapter saved at ``label``: the base classifier wrapped with
    the family's targets and head, the saved LoRA and head tensors loaded, then merged."""
    from peft import LoraConfig, TaskType, get_peft_model, set_peft_model_state_dict

    tokenizer = load_tokenizer(cfg.model)
    names = read_checkpoint_metrics(run, label)["label_names"]
    model = load_classifier(cfg.model, tokenizer, names)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=RANK, lora_alpha=cfg.finetune.lora.alpha,
        target_modules=list(FAMILIES[family]["targets"]),
        modules_to_save=list(FAMILIES[family]["head"]),  # peft extends it in place
        fan_in_fan_out=family == "gpt2",
    )  # fmt: skip
    wrapped = get_peft_model(model, config)
    state = load_train_state(run, label, torch.device("cpu"))["adapter"]
    loaded = set_peft_model_state_dict(wrapped, state)
    assert not loaded.unexpected_keys
    return wrapped.merge_and_unload().eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_only_lora_and_head_parameters_train(family, models, separable_csv, tmp_path):
    cfg = lora_config(tmp_path, models[family], separable_csv)
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    trainer = train._Trainer(run, cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    for indices in (np.arange(16), np.arange(16, 32), np.arange(32, 48)):
        trainer.train_step(indices)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    lora = {n for n in before if ".lora_A." in n or ".lora_B." in n}
    head = {n for n in before if ".modules_to_save." in n}
    assert lora and head and trainable == lora | head
    assert changed == lora | head  # every base weight bitwise unchanged, the head's original too
    assert all(any(f".{h}." in f".{n}" for h in FAMILIES[family]["head"]) for n in head)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_checkpoints_are_peft_merges(family, lora_runs):
    run, cfg, labels = lora_runs[family]
    assert labels == LABELS
    base = load_file(local_checkpoint_path(run, "base") / "model.safetensors")
    final = load_file(local_checkpoint_path(run, "final") / "model.safetensors")
    # The newest checkpoint keeps its training state, and with it the adapter.
    expected = peft_merged(family, run, cfg, "final").state_dict()
    assert set(final) == set(base) <= set(expected)  # the layout of full fine-tuning
    worst = max(float((final[n] - expected[n]).abs().max()) for n in final)
    assert worst <= 1e-6, f"max |saved - peft merge| = {worst}"
    targets, head = FAMILIES[family]["targets"], FAMILIES[family]["head"]
    moved = {n for n in final if not torch.equal(final[n], base[n])}
    assert moved and all(any(f".{t}." in n or n.startswith(f"{t}.") for t in targets + head)
                         for n in moved)  # fmt: skip

    metrics = read_checkpoint_metrics(run, "final")
    model = load_classifier(local_checkpoint_path(run, "final"))
    modules = dict(model.named_modules())
    paths = [p for p in modules if any(p.endswith(f".{t}") for t in targets)]
    lora = sum(RANK * sum(modules[p].weight.shape) for p in paths)  # A: r x in, B: out x r
    trained_head = sum(p.numel() for h in head for p in modules[h].parameters())
    assert metrics["method"] == "lora" and metrics["lora_rank"] == RANK
    assert metrics["lora_target_modules"] == paths
    assert metrics["trainable_parameters"] == lora + trained_head
    assert metrics["total_parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_store_equals_a_forward_of_the_merged_model(family, lora_runs):
    run, cfg, _ = lora_runs[family]
    merged = peft_merged(family, run, cfg, "final").base_model
    tokenizer = load_tokenizer(cfg.model)
    ds = open_store(run.activations())
    stored = ds.activations.sel(checkpoint="final").values  # (layer, token, hidden)
    texts = read_split(run, "probe")["text"].tolist()
    for i, text in enumerate(texts):
        encoded = tokenizer(text, truncation=True, max_length=24, return_tensors="pt")
        with torch.no_grad():
            direct = torch.stack(merged(**encoded, output_hidden_states=True).hidden_states)
        tokens = (ds.example_of_token == i).values
        np.testing.assert_allclose(stored[:, tokens], direct[:, 0].numpy(), rtol=0, atol=1e-4)


def test_lora_resumes_to_the_same_weights(lora_runs, models, separable_csv, tmp_path):
    reference, _, _ = lora_runs["bert"]
    cfg = lora_config(tmp_path, models["bert"], separable_csv)
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    assert finetune(run, cfg, stop_after=2) == LABELS[:2]
    torch.manual_seed(999)  # as in a fresh process: every state must come from the run
    assert finetune(run, cfg) == LABELS
    expected = load_file(local_checkpoint_path(reference, "final") / "model.safetensors")
    for name, value in load_file(local_checkpoint_path(run, "final") / "model.safetensors").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)
