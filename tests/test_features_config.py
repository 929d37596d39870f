"""FeaturesConfig: validation and defaults taken from the run config."""

from __future__ import annotations

import pytest

from layerdrift.config import RunConfig
from layerdrift.tasks.features.config import FeaturesConfig


def test_defaults_follow_the_sae_section():
    cfg = RunConfig(sae={"k": 8, "batch_size": 512, "token_budget": 1000, "seed": 3})
    fcfg = FeaturesConfig.from_run_config(cfg)
    assert (fcfg.k, fcfg.batch_size, fcfg.token_budget, fcfg.seed) == (8, 512, 1000, 3)
    assert (fcfg.base, fcfg.finetuned, fcfg.match_threshold) == ("base", "final", 0.7)


def test_the_crosscoder_architecture_can_differ_from_the_saes():
    cfg = RunConfig(features={"architecture": "relu", "l1_coefficient": 3e-3})
    fcfg = FeaturesConfig.from_run_config(cfg)
    assert (fcfg.architecture, fcfg.l1_coefficient) == ("relu", 3e-3)
    assert cfg.sae.architecture == "topk"
    unset = FeaturesConfig.from_run_config(RunConfig(sae={"architecture": "relu"}))
    assert unset.architecture == "relu"  # unset: follows the SAE section


def test_a_features_section_wins():
    class Section:
        def model_dump(self):
            return {"finetuned": "step-000100", "match_threshold": 0.8, "layers": [1, 2]}

    class Cfg:
        features = Section()

    fcfg = FeaturesConfig.from_run_config(Cfg())
    assert fcfg.finetuned == "step-000100" and fcfg.layers == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_only_below": 0.6, "finetuned_only_above": 0.4}, "base_only_below"),
        ({"auroc_high": 0.4}, "auroc_low"),
        ({"match_threshold": 1.5}, "cosine"),
        ({"finetuned": "base"}, "two checkpoints"),
        ({"architecture": "gated"}, "architecture"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeaturesConfig(**kwargs)
