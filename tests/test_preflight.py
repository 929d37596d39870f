"""Validation before writing: every bad input fails in preflight with one line naming it,
leaves no trace in the runs folder, and the same run name passes once the input is fixed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import tiny_runs
from factories import separable_texts

from layerdrift.config import RunConfig
from layerdrift.storage import RunDir, save_run_config
from layerdrift.storage.rundir import RunConfigMismatchError
from layerdrift.tasks.data import DatasetError
from layerdrift.tasks.modeling import LoraTargetError, ModelNotFoundError, UnsupportedModelError
from layerdrift.tasks.preflight import PreflightError, preflight


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir, separable_csv) -> dict[str, Path]:
    """Broken variants of the tiny model and the separable CSV."""
    root = tmp_path_factory.mktemp("bad-inputs")
    no_tokenizer = root / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, no_tokenizer / name)
    unknown = root / "unknown-type"
    shutil.copytree(tiny_model_dir, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "frobnicator"}))
    latin1 = root / "latin1.csv"
    rows = "".join(f"caf\xe9 {i},{'pos' if i % 2 else 'neg'}\n" for i in range(400))
    latin1.write_bytes(b"text,label\n" + rows.encode("latin-1"))
    review = root / "review.csv"
    separable_texts(600).rename(columns={"text": "review"}).to_csv(review, index=False)
    one_class = root / "one-class.csv"
    separable_texts(600).assign(label="pos").to_csv(one_class, index=False)
    return {
        "xlm_roberta": _tiny_xlm_roberta(root / "xlm-roberta"),
        "model": tiny_model_dir,
        "csv": separable_csv,
        "no_tokenizer": no_tokenizer,
        "unknown": unknown,
        "latin1": latin1,
        "review": review,
        "one_class": one_class,
    }


def _tiny_xlm_roberta(folder: Path) -> Path:
    """A tiny XLM-RoBERTa: a family the adapter runs but has no LoRA default for."""
    import torch
    from families import TOKENIZERS
    from transformers import AutoConfig, AutoModel

    tokenizer = TOKENIZERS["roberta"]()
    config = AutoConfig.for_model(
        "xlm-roberta", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config(tmp_path: Path, inputs: dict[str, Path], **sections) -> RunConfig:
    values = tiny_runs.tiny_config(inputs["model"], inputs["csv"], **sections)
    return RunConfig.model_validate({**values, "runs_root": str(tmp_path / "runs")})


BAD = {
    "non-UTF-8 CSV": (
        lambda i: {"data": {"dataset": f"csv:{i['latin1']}"}},
        DatasetError,
        r"CSV file .*latin1\.csv is not UTF-8 text \(byte 0xe9",
    ),
    "missing text column": (
        lambda i: {"data": {"dataset": f"csv:{i['review']}"}},
        DatasetError,
        r"has no text column 'text' .*set data\.text_column",
    ),
    "one class": (
        lambda i: {"data": {"dataset": f"csv:{i['one_class']}"}},
        DatasetError,
        r"1 class\(es\) \['pos'\]",
    ),
    "splits larger than the data": (
        lambda i: {"data": {"train_size": 5000}},
        DatasetError,
        r"the splits ask for 5100",
    ),
    "model folder without tokenizer": (
        lambda i: {"model": str(i["no_tokenizer"])},
        ModelNotFoundError,
        r"has no tokenizer files .*tokenizer\.save_pretrained",
    ),
    "unknown model_type": (
        lambda i: {"model": str(i["unknown"])},
        UnsupportedModelError,
        r"has model_type 'frobnicator', which transformers .* does not know",
    ),
    "missing model folder": (
        lambda i: {"model": str(i["model"]) + "-gone"},
        ModelNotFoundError,
        r"does not exist",
    ),
    "sae.layers out of range": (
        lambda i: {"sae": {"layers": [0, 5]}},
        PreflightError,
        r"sae\.layers \[5\] are out of range: .* layers 0 \(embeddings\) to 2",
    ),
    "features.layers out of range": (
        lambda i: {"features": {"layers": [-1]}},
        PreflightError,
        r"features\.layers \[-1\] are out of range",
    ),
    "unknown SAE checkpoint": (
        lambda i: {"sae": {"checkpoints": ["base", "step-000003"]}},
        PreflightError,
        r"sae\.checkpoints \['step-000003'\] are not checkpoints of this run: .*step-000005",
    ),
    "similarity pair naming no checkpoint": (
        lambda i: {"similarity": {"pairs": [["base", "final"], ["step-000003", "final"]]}},
        PreflightError,
        r"similarity\.pairs names \['step-000003'\], not checkpoints of this run: "
        r"fine-tuning writes .*step-000005",
    ),
    "features checkpoint without SAE": (
        lambda i: {"features": {"finetuned": "step-000005"}},
        PreflightError,
        r"features\.finetuned 'step-000005' has no SAE",
    ),
    "LoRA on a family without default targets": (
        lambda i: {"model": str(i["xlm_roberta"]), "finetune": {"method": "lora"}},
        LoraTargetError,
        r"finetune\.method = 'lora' has no default target modules for model family "
        r"'xlm-roberta': set finetune\.lora\.target_modules, e\.g\. .*query",
    ),
    "LoRA targets naming no module": (
        lambda i: {"finetune": {"method": "lora", "lora": {"target_modules": ["query", "qkv"]}}},
        LoraTargetError,
        r"finetune\.lora\.target_modules \['qkv'\] name no linear or embedding module of "
        r"model family 'bert' outside its classification head: use names among .*key, .*query",
    ),
    "LoRA targets naming only the head": (
        lambda i: {"finetune": {"method": "lora", "lora": {"target_modules": ["classifier"]}}},
        LoraTargetError,
        r"target_modules \['classifier'\] name no linear or embedding module",
    ),
    "freeze grid beyond the last layer": (
        lambda i: {"importance": {"freeze_grid": [0, 3]}},
        PreflightError,
        r"importance\.freeze_grid = \[0, 3\] has k = \[3\], but model .* has layers 0 "
        r"\(embeddings\) to 2: use k <= 2",
    ),
    "freeze grid with LoRA": (
        lambda i: {"importance": {"freeze_grid": [0]}, "finetune": {"method": "lora"}},
        PreflightError,
        r"importance\.freeze_grid .* LoRA .* unset importance\.freeze_grid",
    ),
    "cuda without a GPU": (
        lambda i: {"device": "cuda"},
        PreflightError,
        r"--device cuda was asked for but torch sees no CUDA GPU",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_before_anything_is_written(case, tmp_path, inputs):
    import torch

    change, error, message = BAD[case]
    if case == "cuda without a GPU" and torch.cuda.is_available():
        change = lambda i: {"sae": {"layers": [9]}}  # noqa: E731  (a GPU is there)
        error, message = PreflightError, "out of range"
    config = _config(tmp_path, inputs, **change(inputs))
    with pytest.raises(error, match=message) as caught:
        preflight(config)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()
    # The same run name passes once the input is fixed.
    fixed = _config(tmp_path, inputs, name=config.name)
    assert preflight(fixed).num_layers == 2
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_of_another_config_is_refused_first(tmp_path, inputs):
    config = _config(tmp_path, inputs)
    save_run_config(RunDir(config.run_url), config.to_json(), config.config_hash())
    other = _config(tmp_path, inputs, finetune={"epochs": 2})
    with pytest.raises(RunConfigMismatchError, match="choose another --name"):
        preflight(other)


def test_a_resumed_run_does_not_need_its_source_data_again(tmp_path, inputs):
    from layerdrift.tasks.data import prepare_data

    csv = tmp_path / "texts.csv"
    shutil.copy(inputs["csv"], csv)
    config = _config(tmp_path, inputs, data={"dataset": f"csv:{csv}"})
    run = RunDir(config.run_url)
    save_run_config(run, config.to_json(), config.config_hash())
    prepare_data(run, config)
    csv.unlink()
    assert preflight(config).family == "bert"


def test_lora_targets_may_be_given_for_any_family_or_one_layer(tmp_path, inputs):
    given = {"method": "lora", "lora": {"target_modules": ["query", "value"]}}
    config = _config(tmp_path, inputs, model=str(inputs["xlm_roberta"]), finetune=given)
    assert preflight(config).family == "xlm-roberta"
    one_layer = {"method": "lora", "lora": {"target_modules": ["layer.1.attention.self.query"]}}
    assert preflight(_config(tmp_path, inputs, finetune=one_layer)).family == "bert"
    assert not (tmp_path / "runs").exists()


def test_lora_error_exits_2_from_the_command_line(tmp_path, inputs):
    values = tiny_runs.tiny_config(inputs["model"], inputs["csv"])
    values["finetune"] = {"method": "lora"}
    toml = tiny_runs.to_toml({**values, "runs_root": str(tmp_path / "runs")})
    toml += '\n[finetune.lora]\ntarget_modules = ["qkv"]\n'
    (tmp_path / "lora.toml").write_text(toml)
    done = subprocess.run(
        [*tiny_runs.LAYERDRIFT, "run", "lora.toml"], cwd=tmp_path, capture_output=True,
        text=True, env=tiny_runs.cli_env(tmp_path / "prefect"), timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: finetune.lora.target_modules ['qkv'] name no"), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()
