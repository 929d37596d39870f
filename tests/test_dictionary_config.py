"""The sae and features sections: nested dictionary and training tables, flat keys, presets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from layerdrift.config import PRESETS, FeaturesConfig, RunConfig, build_config, load_run_config


def test_flat_keys_of_the_readme_land_in_the_nested_tables(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'preset = "quick"\n[sae]\nlayers = [0, 3, 6]\nk = 8\ntoken_budget = 9000\n'
        '[features]\narchitecture = "relu"\nl1_coefficient = 3e-3\nhist_bins = 7\n'
        "card_context = 2\n"
    )
    cfg = build_config("quick", toml)
    assert cfg.sae.layers == (0, 3, 6) and cfg.sae.dictionary.k == 8
    assert cfg.sae.training.token_budget == 9000  # the file beats the preset
    assert cfg.sae.training.batch_size == PRESETS["quick"]["sae"]["training"]["batch_size"]
    assert (cfg.features.dictionary.architecture, cfg.features.dictionary.l1_coefficient) == (
        "relu",
        3e-3,
    )
    assert (cfg.features.hist_bins, cfg.features.card_context) == (7, 2)
    assert load_run_config(cfg.to_json()) == cfg


def test_nested_tables_from_toml(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        '[sae.dictionary]\narchitecture = "jumprelu"\nl0_coefficient = 0.3\n'
        '[features.dictionary]\narchitecture = "batchtopk"\nk = 16\n'
        "[features.training]\nlearning_rate = 1e-3\n"
    )
    cfg = build_config(None, toml)
    assert cfg.sae.dictionary.architecture == "jumprelu"
    assert cfg.features.dictionary.architecture == "batchtopk"
    assert cfg.features.dictionary.l0_coefficient == 0.3  # unset: follows the SAE section
    assert cfg.features.training.learning_rate == 1e-3


def test_the_crosscoder_follows_the_sae_section_where_unset():
    cfg = RunConfig(sae={"k": 8, "batch_size": 512, "token_budget": 1000, "seed": 3})
    training = cfg.features.training
    assert cfg.features.dictionary.k == 8
    assert (training.batch_size, training.token_budget, training.seed) == (512, 1000, 3)
    cfg = RunConfig(sae={"architecture": "relu"}, features={"token_budget": None})
    assert cfg.features.dictionary.architecture == "relu"
    assert cfg.features.training.token_budget == cfg.sae.training.token_budget  # None: unset
    cfg = RunConfig(features={"architecture": "relu", "l1_coefficient": 3e-3})
    assert cfg.sae.dictionary.architecture == "topk"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sae": {"k": 8, "dictionary": {"k": 9}}}, "sae.k and sae.dictionary.k differ"),
        ({"sae": {"architecture": "gated"}}, "topk', 'batchtopk', 'jumprelu' or 'relu'"),
        ({"features": {"base_only_below": 0.6, "finetuned_only_above": 0.4}}, "base_only_below"),
        ({"features": {"auroc_high": 0.4}}, "auroc_high"),
        ({"features": {"match_threshold": 1.5}}, "match_threshold"),
        ({"features": {"finetuned": "base"}}, "two checkpoints"),
        ({"features": {"dictionary": {"bandwidth": 0}}}, "bandwidth"),
        ({"sae": {"training": {"cards": 1}}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        RunConfig.model_validate(values)


def test_a_features_section_constructed_directly():
    fcfg = FeaturesConfig(finetuned="step-000100", match_threshold=0.8, layers=[1, 2], k=4)
    assert fcfg.finetuned == "step-000100" and fcfg.layers == (1, 2)
    assert fcfg.dictionary.k == 4
