"""Every supported family through the model adapter and the whole pipeline, on tiny models.

Ten families (BERT, DistilBERT, ELECTRA with a projected embedding, MPNet, RoBERTa, GPT-2,
ModernBERT, ALBERT with one shared layer, DeBERTa-v2, Llama), each a 2-layer hidden-32 random
model with a tokenizer of its real kind (tests/families.py). For each:

- the adapter's site of ``hidden_states[l]`` outputs exactly ``hidden_states[l]`` in a padded
  batch, and a splice there changes exactly that hidden state (the final norm of GPT-2, Llama
  and ModernBERT included);
- fine-tune → extract → similarity → SAEs (with accuracy and loss recovered) → features →
  report runs (in-process; GPT-2 through ``layerdrift run``), the stored activations equal
  an unpadded ``output_hidden_states`` forward pass of each probe example, every real token
  is recorded, and token text is readable.

Run with ``-s`` to see the per-family table of stored-vs-direct errors.
"""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import torch
from families import DECODERS, FAMILIES, make_family_model
from tiny_runs import LAYERDRIFT, cli_env, to_toml

from layerdrift.config import LoraConfig, RunConfig
from layerdrift.storage import save_run_config
from layerdrift.storage.activations import open_store
from layerdrift.storage.checkpoints import checkpoint_complete
from layerdrift.storage.results import open_result
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data import prepare_data, read_split
from layerdrift.tasks.dictionary.evaluate import RECOVERY_EPS
from layerdrift.tasks.extract import create_store_for_run, extract_checkpoint_for_run
from layerdrift.tasks.features import compare_features_for_run, write_feature_results
from layerdrift.tasks.finetune import finetune
from layerdrift.tasks.finetune.lora import merged_copy, wrap_lora
from layerdrift.tasks.modeling import (
    DEFAULT_LORA_TARGETS,
    find_layer_sites,
    head_parameters,
    hook_names,
    inspect_model,
    layer_parameters,
    load_classifier,
    load_encoder,
    load_tokenizer,
    lora_plan,
    splice,
)
from layerdrift.tasks.report import build_report
from layerdrift.tasks.sae.run import evaluate_saes_for_run, train_saes_for_run
from layerdrift.tasks.similarity.run import compute_similarity

CLI_FAMILY = "gpt2"  # one family through `layerdrift run` (the flow); the others in-process
TEXTS = ["the movie was great", "a really boring film and a poor plot 12", "lovely"]
MARKERS = re.compile("[Ġ▁]|^##")


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    """A function: the saved tiny model folder of a family, built once per module."""
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = make_family_model(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_output_the_hidden_states_and_splices_hit_them(family_dir, family):
    folder = family_dir(family)
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    model = load_classifier(folder, tokenizer, ["neg", "pos"])
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool()
    push = torch.linspace(-1.0, 1.0, 32)  # not constant: pre-norm models ignore a uniform shift
    with torch.no_grad():
        clean = model(**batch, output_hidden_states=True)
        assert len(find_layer_sites(model)) == len(clean.hidden_states) == 3
        for layer, state in enumerate(clean.hidden_states):
            seen: list[torch.Tensor] = []
            with splice(model, layer, lambda h, seen=seen: seen.append(h.clone()) or h, real):
                again = model(**batch).logits
            torch.testing.assert_close(seen[0], state[real], rtol=0, atol=0)
            torch.testing.assert_close(again, clean.logits, rtol=0, atol=0)
            with splice(model, layer, lambda h: h + push, real):
                moved = model(**batch, output_hidden_states=True)
            expected = state.clone()
            expected[real] += push
            torch.testing.assert_close(moved.hidden_states[layer], expected)
            assert not torch.allclose(moved.logits, clean.logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_models_load_with_their_own_torch_code_not_hub_kernels(family_dir, family):
    """transformers >= 5.25 kernelizes loaded models when `kernels` is installed, and each
    train()/eval() then re-binds the forward of layers such as RMSNorm: a forward put on a
    module (as the layer replays do) would be silently undone. Every loader turns that off."""
    from layerdrift.tasks.report.predictions import load_classifier as report_classifier

    folder = family_dir(family)
    tokenizer = load_tokenizer(str(folder))
    models = [
        load_classifier(folder, tokenizer, ["neg", "pos"]),
        load_encoder(folder, torch.device("cpu")),
        report_classifier(folder),
    ]
    for model in models:
        assert getattr(model, "use_kernels", False) is False, type(model).__name__
        base = getattr(model, "base_model", model)
        module = base.get_submodule(find_layer_sites(base)[-1].module)
        module.forward = lambda *args, **kwargs: "replayed"
        model.train()
        model.eval()
        assert module.__dict__.pop("forward")() == "replayed", type(model).__name__


@pytest.mark.parametrize("family", FAMILIES)
def test_inspect_reports_the_shape_and_sites(family_dir, family):
    info = inspect_model(str(family_dir(family)))
    assert (info.family, info.num_layers, info.hidden_size) == (family, 2, 32)
    assert list(info.layers) == [0, 1, 2] and len(info.sites) == 3
    assert info.tokenizer_size <= info.vocab_size


# Each family's classification head as its classifier class builds it, written out here.
HEADS = {
    "albert": ("albert.pooler", "classifier"),
    "bert": ("bert.pooler", "classifier"),
    "deberta-v2": ("classifier", "pooler"),
    "distilbert": ("classifier", "pre_classifier"),
    "electra": ("classifier",),
    "gpt2": ("score",),
    "llama": ("score",),
    "modernbert": ("classifier", "head"),
    "mpnet": ("classifier",),
    "roberta": ("classifier",),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_defaults_adapt_every_layer_and_merge_exactly(family_dir, family):
    """The default LoRA targets hit one module each per layer (ALBERT's one shared layer
    once), the head is the family's, and a merged copy computes what the adapter does."""
    folder = family_dir(family)
    model = load_classifier(folder, load_tokenizer(str(folder)), ["neg", "pos"])
    plan = lora_plan(model)
    layers = 1 if family == "albert" else 2
    assert len(plan.targets) == layers * len(DEFAULT_LORA_TARGETS[family])
    for target in DEFAULT_LORA_TARGETS[family]:
        assert sum(path.endswith(f".{target}") for path in plan.targets) == layers
    assert plan.head == HEADS[family]
    head = [
        n for n, _ in model.named_parameters() if n.startswith(tuple(f"{h}." for h in plan.head))
    ]
    assert sorted(head) == sorted(head_parameters(model))
    if family != "albert":
        assert sorted(head) == sorted(layer_parameters(model).head)

    torch.manual_seed(0)
    wrapped, _ = wrap_lora(model, LoraConfig(rank=2, dropout=0.0))
    for name, param in wrapped.named_parameters():
        if ".lora_B." in name:  # B starts at zero: give the update something to merge
            param.data.normal_(0.0, 0.5)
    batch = load_tokenizer(str(folder))(TEXTS, return_tensors="pt", padding=True)
    merged_model = merged_copy(wrapped.eval()).eval()
    assert type(merged_model) is type(model)  # the family's own classifier, no LoRA left
    assert not [n for n, _ in merged_model.named_parameters() if "lora_" in n]
    with torch.no_grad():
        adapted = wrapped(**batch).logits
        merged = merged_model(**batch).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_names_name_the_traced_module_of_each_hidden_state(family_dir, family):
    """``hf_hook_name`` is a module of ``AutoModel`` whose output (at the stated call) is
    ``hidden_states[l]`` of that model; BERT's ``hook_name`` is TransformerLens's."""
    from transformers import AutoModel

    folder = family_dir(family)
    config = json.loads((folder / "config.json").read_text())
    model = AutoModel.from_pretrained(folder).eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = [
        module.register_forward_hook(
            lambda m, a, out, name=name: outputs.setdefault(name, []).append(
                out[0] if isinstance(out, tuple) else out
            )
        )
        for name, module in model.named_modules()
        if name
    ]
    with torch.no_grad():
        states = model(input_ids=torch.tensor([[5, 6, 7, 8]]), output_hidden_states=True)
    for handle in handles:
        handle.remove()
    for layer, state in enumerate(states.hidden_states):
        names = hook_names(config, layer)
        module, _, call = names["hf_hook_name"].partition("#")
        torch.testing.assert_close(outputs[module][int(call or 0)], state, rtol=0, atol=0)
        if family == "bert":
            expected = (
                "hook_full_embed"
                if layer == 0
                else f"blocks.{layer - 1}.hook_normalized_resid_post"
            )
            assert names["hook_name"] == expected
        else:
            assert names["hook_name"] == names["hf_hook_name"]
    with pytest.raises(ValueError, match="outside 0..2"):
        hook_names(config, 3)


def _config(folder, csv, tmp_path) -> dict:
    """The tiny run's configuration values (a TOML file for the CLI, a RunConfig in-process)."""
    return {
        "name": "family",
        "runs_root": str(tmp_path),
        "model": str(folder),
        "device": "cpu",
        "data": {
            "dataset": f"csv:{csv}",
            "train_size": 64,
            "val_size": 32,
            "probe_size": 32,
            "max_length": 24,
        },
        # Four steps: enough to exercise fine-tuning. A random post-norm encoder needs about
        # 60 at 3e-3 to find the cue word (decoders about 16), too slow for every family here.
        "finetune": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "checkpoints": []},
        "extract": {"token_chunk": 128, "dtype": "float32"},
        "similarity": {"probe_folds": 2},
        "sae": {
            "layers": [0, 2],
            "token_budget": 1024,
            "batch_size": 128,
            "expansion_factor": 2,
            "k": 4,
            "heldout_fraction": 0.25,
        },
        "features": {"token_budget": 512},
        "report": {"token_pictures": 1},
    }


def _run_cli(values: dict, tmp_path, api_url: str) -> None:
    """``layerdrift run family.toml``: the flow, its Prefect tasks and the command line."""
    toml = tmp_path / "family.toml"
    toml.write_text(to_toml(values))
    done = subprocess.run(
        [*LAYERDRIFT, "run", str(toml)],
        cwd=tmp_path,
        env=cli_env(tmp_path / "prefect", PREFECT_API_URL=api_url),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def _run_stages(run: RunDir, cfg: RunConfig) -> list[str]:
    """Every stage, in-process, through the plain functions the Prefect tasks wrap."""
    save_run_config(run, cfg.to_json(), cfg.config_hash())
    prepare_data(run, cfg)
    labels = finetune(run, cfg)
    create_store_for_run(run, cfg, labels)
    for label in labels:
        extract_checkpoint_for_run(run, cfg, label)
    compute_similarity(run, cfg)
    for checkpoint in cfg.sae.checkpoints:
        train_saes_for_run(run, cfg, checkpoint, list(cfg.sae.layers))
    evaluate_saes_for_run(run, cfg)
    write_feature_results(run, cfg, [compare_features_for_run(run, cfg, 2)])
    build_report(run)
    return labels


def _stored_vs_direct(run: RunDir, labels: list[str], tokenizer) -> float:
    """Largest |stored − direct| over checkpoints, layers, tokens; asserts the token layout."""
    ds = open_store(run.activations())
    texts = [str(t) for t in ds.text.values]
    worst = 0.0
    for label in labels:
        model = load_encoder(run.checkpoint(label), torch.device("cpu"))
        stored = ds.activations.sel(checkpoint=label).values  # (layer, token, hidden)
        for i, text in enumerate(texts):
            encoded = tokenizer(text, truncation=True, max_length=24, return_tensors="pt")
            with torch.no_grad():
                direct = torch.stack(model(**encoded, output_hidden_states=True).hidden_states)
            tokens = (ds.example_of_token == i).values
            ids = encoded["input_ids"][0].tolist()
            assert ds.token_id.values[tokens].tolist() == ids  # every real token, no padding
            worst = max(worst, float(np.abs(stored[:, tokens] - direct[:, 0].numpy()).max()))
    return worst


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family_dir, separable_csv, tmp_path, family, prefect_api_url):
    values = _config(family_dir(family), separable_csv, tmp_path)
    run = RunDir(RunConfig.model_validate(values).run_url)
    if family == CLI_FAMILY:
        _run_cli(values, tmp_path, prefect_api_url)
    else:
        assert _run_stages(run, RunConfig.model_validate(values)) == ["base", "final"]
    labels = ["base", "final"]
    assert all(checkpoint_complete(run, label) for label in labels)
    tokenizer = load_tokenizer(run.checkpoint("final"))

    error = _stored_vs_direct(run, labels, tokenizer)
    print(f"\n{family}: stored vs direct max |error| {error:.2e}")
    assert error < 1e-4

    ds = open_store(run.activations())
    pieces = [str(p) for p in ds.token_piece.values]
    assert pieces == tokenizer.convert_ids_to_tokens(ds.token_id.values.tolist())
    texts = [str(t) for t in ds.token_text.values]
    assert not [t for t in texts if MARKERS.search(t)], "raw tokenizer markers in token_text"
    probe = read_split(run, "probe")
    assert ds.token_count.values.tolist() == [
        len(tokenizer(t, truncation=True, max_length=24)["input_ids"]) for t in probe["text"]
    ]
    if family in DECODERS:  # nothing added around the text but Llama's bos
        assert ds.is_special.values.sum() == (len(probe) if family == "llama" else 0)

    # Recovery through the splice, in each checkpoint's own classifier. The base one (a
    # random head) always answers to its input, so its loss recovered is defined; after four
    # steps the fine-tuned head may have collapsed to one answer, which leaves it undefined.
    metrics = open_result(run.results(), "sae_metrics")["sae_metrics"]
    recovery = open_result(run.results(), "sae_recovery")["sae_recovery"]
    for checkpoint, layer in [(c, li) for c in labels for li in (0, 2)]:
        at = {"checkpoint": checkpoint, "layer": layer}
        q = {str(k): float(recovery.sel(**at, quantity=k)) for k in recovery.quantity.values}
        for name in ("loss", "accuracy"):
            got = float(metrics.sel(**at, metric=f"{name}_recovered"))
            clean, spliced, ablated = (q[f"{name}_{m}"] for m in ("clean", "sae", "mean"))
            print(f"  {checkpoint} layer {layer}: {name} recovered {got:.3f}")
            if abs(ablated - clean) < RECOVERY_EPS:
                assert np.isnan(got)
            else:
                assert got == pytest.approx((ablated - spliced) / (ablated - clean))
        if checkpoint == "base":
            assert np.isfinite(float(metrics.sel(**at, metric="loss_recovered")))
    cards = json.loads(run.read_text("features", "cards.json"))
    shown = [t for card in cards for ex in card["examples"] for t in ex["tokens"]]
    assert shown and not [t for t in shown if MARKERS.search(t)]
    assert run.exists("report.html")
