"""The run configuration: presets, TOML and flag overrides, validation, stable hash."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from layerdrift.config import PRESETS, RunConfig, build_config, load_run_config
from layerdrift.storage import RunConfigMismatchError, RunDir, save_run_config


def test_presets_resolve_and_flags_override_the_file(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('name = "from-file"\nseed = 7\n[data]\nprobe_size = 123\n')
    config = build_config("quick", toml, {"name": "from-flag", "device": "cpu"})
    assert config.name == "from-flag"  # flag beats file
    assert config.seed == 7  # file beats preset
    assert config.data.probe_size == 123
    assert config.data.train_size == PRESETS["quick"]["data"]["train_size"]  # preset kept
    assert config.device == "cpu"


def test_hash_is_stable_and_ignores_where_the_run_lives():
    a = build_config("quick")
    b = build_config("quick", overrides={"name": "elsewhere", "runs_root": "s3://bucket/runs"})
    c = build_config("quick", overrides={"seed": 1})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()
    assert load_run_config(a.to_json()) == a
    assert json.loads(a.to_json())["config_hash"] == a.config_hash()


def test_freeze_grid_is_sorted_and_off_by_default():
    assert RunConfig().importance.freeze_grid == ()
    config = RunConfig.model_validate({"importance": {"freeze_grid": [4, 0, 2, 2]}})
    assert config.importance.freeze_grid == (0, 2, 4)


def test_checkpoint_schedule_always_has_base_and_final():
    config = RunConfig.model_validate({"finetune": {"checkpoints": [0.5, 0.25]}})
    assert config.finetune.checkpoints == (0.0, 0.25, 0.5, 1.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data": {"dataset": "imdb"}}, "unknown dataset 'imdb'"),
        ({"finetune": {"checkpoints": [1.5]}}, "must lie in [0, 1]"),
        ({"name": "../escape"}, "must be letters"),
        ({"data": {"probe_size": 0}}, "greater than 0"),
        ({"data": {"unknown_field": 1}}, "Extra inputs are not permitted"),
        ({"sae": {"checkpoints": ["middle"]}}, "are not checkpoint labels"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"importance": {"freeze_grid": [2, -1]}}, "importance.freeze_grid [-1] are negative"),
        (
            {"importance": {"freeze_grid": [0]}, "finetune": {"freeze_layers": 1}},
            "compares freezing with the run's own full fine-tune, but finetune.freeze_layers = 1",
        ),
        (
            {"importance": {"freeze_grid": [0]}, "checkpoints": {"final": "some/folder"}},
            "but this run imports its checkpoints: unset importance.freeze_grid",
        ),
    ],
)
def test_bad_values_are_refused_with_a_reason(values, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RunConfig.model_validate(values)


def test_run_directory_refuses_a_different_config(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    first = build_config("quick")
    save_run_config(run, first.to_json(), first.config_hash())
    save_run_config(run, first.to_json(), first.config_hash())  # same config: fine
    other = build_config("quick", overrides={"seed": 3})
    with pytest.raises(RunConfigMismatchError, match="choose another --name"):
        save_run_config(run, other.to_json(), other.config_hash())
    assert load_run_config(run.read_text("config.json")) == first


def test_run_directory_on_an_fsspec_url():
    run = RunDir("memory://runs/config-test")
    config = build_config("quick")
    save_run_config(run, config.to_json(), config.config_hash())
    assert not run.is_local
    url = run.child_url("config.json")
    assert url.startswith("memory://")
    assert RunDir(url).fs.exists(RunDir(url).root)
    assert load_run_config(run.read_text("config.json")) == config


def test_lora_settings_change_the_hashes_and_full_runs_keep_theirs(tmp_path):
    import hashlib

    from layerdrift.tasks.finetune import finetune_fingerprint

    full = build_config("quick")
    lora = build_config("quick", overrides={"finetune": {"method": "lora"}})
    rank = build_config("quick", overrides={"finetune": {"method": "lora", "lora": {"rank": 4}}})
    assert len({full.config_hash(), lora.config_hash(), rank.config_hash()}) == 3
    assert len({finetune_fingerprint(c) for c in (full, lora, rank)}) == 3
    # Full fine-tuning leaves method and lora out, so it hashes as before they existed:
    # the fingerprint's payload as it was (freeze_layers unset, left out too).
    section = full.finetune.model_dump(mode="json")
    old = {k: v for k, v in section.items() if k not in ("method", "lora", "freeze_layers")}
    payload = {"model": full.model, "trust_remote_code": False, "seed": full.seed,
               "data": full.data.model_dump(mode="json"), "finetune": old}  # fmt: skip
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert finetune_fingerprint(full) == digest
    # A config.json written before the fields existed opens and matches its run folder.
    stored = json.loads(full.to_json())
    del stored["config"]["finetune"]["method"], stored["config"]["finetune"]["lora"]
    run = RunDir(str(tmp_path / "old"))
    run.write_text(json.dumps(stored), "config.json")
    reopened = load_run_config(run.read_text("config.json"))
    assert reopened.finetune.method == "full" and reopened.config_hash() == stored["config_hash"]
    save_run_config(run, full.to_json(), full.config_hash())  # the same run: accepted
    with pytest.raises(RunConfigMismatchError):
        save_run_config(run, lora.to_json(), lora.config_hash())


@pytest.mark.parametrize(
    ("finetune", "message"),
    [
        ({"method": "lora", "freeze_layers": 2}, "freeze_layers cannot be combined with method"),
        ({"method": "lora", "lora": {"target_modules": []}}, "must name at least one module"),
        ({"method": "lora", "lora": {"rank": 0}}, "greater than 0"),
        ({"method": "adapter"}, "Input should be 'full' or 'lora'"),
    ],
)
def test_bad_lora_settings_are_refused(finetune, message):
    with pytest.raises(ValidationError, match=message):
        RunConfig.model_validate({"finetune": finetune})


def test_similarity_pairs_change_the_hash_only_when_given():
    plain = RunConfig()
    asked = RunConfig.model_validate({"similarity": {"pairs": [["base", "step-000062"]]}})
    assert asked.similarity.pairs == (("base", "step-000062"),)
    assert asked.config_hash() != plain.config_hash()
    # Runs made before the field existed keep their hash (tests/test_study.py pins the
    # default's).
    with pytest.raises(ValueError, match=r"similarity\.pairs \[\['final', 'final'\]\] compare"):
        RunConfig.model_validate({"similarity": {"pairs": [["final", "final"]]}})


def test_benchmark_configs_build_and_name_their_preset():
    """The TOML files the README and benchmarks run: each builds on its own (its preset
    named inside) and equals the benchmark's --preset form."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
    files = sorted(folder.glob("*.toml"))
    assert files
    for path in files:
        alone = build_config("default", path)
        assert alone.config_hash() == build_config(alone.preset, path).config_hash()
    seeds = build_config("default", folder / "study-seeds.toml")
    assert [prefix for prefix, _, _ in seeds.series()] == [
        "sentiment/seed-0", "sentiment/seed-1", "sentiment/seed-2", "topic"
    ]  # fmt: skip
