"""The similarity floor: a seeded random copy of the model as the ``random`` reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from factories import make_activation_store
from safetensors.torch import load_file
from test_moments import random_store
from test_similarity_metrics import REFERENCES

from layerdrift.config import RunConfig
from layerdrift.storage import RunDir, open_result
from layerdrift.storage.activations import open_store, read_attrs
from layerdrift.storage.checkpoints import local_checkpoint_path, local_random_model_path
from layerdrift.tasks.extract.prefect_tasks import extract_random_for_run, random_reference_complete
from layerdrift.tasks.extract.run import tokens_of_store
from layerdrift.tasks.modeling import forward_hidden_states, random_encoder
from layerdrift.tasks.similarity.metrics import METRICS
from layerdrift.tasks.similarity.run import compute_similarity, similarity_complete


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def test_random_encoder_is_seeded_fresh_and_leaves_the_global_rng(tiny_model_dir):
    state = torch.random.get_rng_state()
    first = _weights(random_encoder(tiny_model_dir, seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)
    again = _weights(random_encoder(tiny_model_dir, seed=3))
    other = _weights(random_encoder(tiny_model_dir, seed=4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(first[name], other[name])
    # BERT's initialisation: N(0, 0.02²) weights, zero biases, unit LayerNorm weights.
    assert first[name].std().item() == pytest.approx(0.02, rel=0.15)
    assert float(first["encoder.layer.0.attention.self.query.bias"].abs().max()) == 0.0
    assert torch.equal(first["embeddings.LayerNorm.weight"], torch.ones(32))
    # Not a copy of the saved weights: those are another draw.
    trained = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    key = next(k for k in trained if k.endswith(name))
    assert not torch.allclose(trained[key], first[name])


def test_random_store_is_a_direct_forward_and_resume_keeps_it(tiny_run):
    config, outcome = tiny_run
    run = RunDir(outcome["run_dir"])
    assert outcome["stages"]["extract:random"] == "ran" and random_reference_complete(run)
    floor, store = open_store(run.random_activations()), open_store(run.activations())
    assert list(floor["checkpoint"].values) == ["random"]
    np.testing.assert_array_equal(floor["token_id"].values, store["token_id"].values)

    model = random_encoder(local_checkpoint_path(run, "base"), config.seed)
    tokens = tokens_of_store(run.random_activations())
    stored = floor["activations"].sel(checkpoint="random").values.astype(np.float32)
    for ex in range(0, len(tokens["token_start"]), 7):
        first, n = int(tokens["token_start"][ex]), int(tokens["token_count"][ex])
        ids = torch.from_numpy(tokens["token_id"][first : first + n].astype(np.int64))[None]
        with torch.inference_mode():
            want = forward_hidden_states(model, ids, torch.ones_like(ids))[:, 0].numpy()
        np.testing.assert_allclose(stored[:, first : first + n], want, rtol=2e-3, atol=2e-3)

    # A rerun finds every chunk and the model folder there: nothing is rebuilt.
    folder = local_random_model_path(run)
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    generation = read_attrs(run.random_activations())["generation"]
    assert extract_random_for_run(run, config) == 0
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert read_attrs(run.random_activations())["generation"] == generation
    assert similarity_complete(run)
    from layerdrift.flows.status import run_status

    assert ("extract", "random", "complete") in run_status(run.url)


def test_random_reference_equals_the_textbook_formulas(tiny_run):
    """similarity[reference=random] = the O(n²) formulas on the two stores' tokens."""
    _, outcome = tiny_run
    run = RunDir(outcome["run_dir"])
    sim = open_result(run.results(), "similarity")["similarity"]
    assert list(sim["reference"].values) == ["base", "previous", "random"]
    floor = xr.open_zarr(run.random_activations())["activations"].values[0].astype(np.float64)
    acts = xr.open_zarr(run.activations())["activations"].values.astype(np.float64)
    for c, label in enumerate(sim["checkpoint"].values):
        for layer in range(acts.shape[1]):
            got = sim.sel(reference="random", checkpoint=label, layer=layer).values
            want = [REFERENCES[m](floor[layer], acts[c, layer]) for m in METRICS]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=f"{label} {layer}")
    ci = open_result(run.results(), "similarity_ci")["similarity_ci"]
    assert "random" in ci["reference"].values


def _planted_random(run: RunDir, acts: np.ndarray, rng) -> np.ndarray:
    """A random store beside ``run``'s planted one: independent noise of the same tokens."""
    base = xr.open_zarr(run.activations())
    counts = base["token_count"].values.tolist()
    noise = rng.standard_normal((1, *acts.shape[1:])).astype(np.float16)
    make_activation_store(run.random_activations(), noise, counts, checkpoints=["random"],
                          token_chunk=16)  # fmt: skip
    group = zarr.open_group(run.random_activations(), mode="r+")
    group.attrs.update({"checkpoints": ["random"], "generation": "random-generation"})
    zarr.consolidate_metadata(run.random_activations())
    return noise


def test_planted_floor_sits_below_base_at_every_layer(tmp_path, rng):
    run = RunDir(str(tmp_path / "run"))
    _, acts = random_store(run.activations(), rng, n_examples=24, token_chunk=16)
    _planted_random(run, acts, rng)
    cfg = RunConfig(similarity={"probes": False, "bootstrap_resamples": 0, "random_floor": True})
    summary = compute_similarity(run, cfg)
    sim = open_result(run.results(), "similarity")["similarity"]
    for metric in ("cosine", "linear_cka", "debiased_cka"):
        to_base = sim.sel(reference="base", checkpoint="final", metric=metric).values
        to_random = sim.sel(reference="random", checkpoint="final", metric=metric).values
        assert (to_random < to_base).all(), metric
        assert ((to_random >= -0.05) & (to_random <= 1)).all(), metric
    np.testing.assert_allclose(
        summary["linear_cka_final_vs_random"],
        sim.sel(reference="random", checkpoint="final", metric="linear_cka").values,
        atol=1e-6,
    )
    assert similarity_complete(run)
    _planted_random(run, acts, rng)  # a rebuilt random store: the tables are stale
    zarr.open_group(run.random_activations(), mode="r+").attrs["generation"] = "rebuilt"
    assert not similarity_complete(run)


def test_a_missing_random_store_is_one_clear_error(tmp_path, rng):
    run = RunDir(str(tmp_path / "run"))
    random_store(run.activations(), rng, n_examples=6, token_chunk=16)
    cfg = RunConfig(similarity={"probes": False, "random_floor": True})
    with pytest.raises(ValueError, match="random.zarr does not exist: run the extract stage"):
        compute_similarity(run, cfg)


def test_floor_sentence_names_the_layers_that_do_not_clear_it():
    import pandas as pd

    from layerdrift.tasks.report.claims import floor_sentence

    to_base = pd.Series([0.99, 0.80, 0.45], index=[0, 1, 2])
    floor = pd.Series([0.60, 0.50, 0.40], index=[0, 1, 2])
    bounds = pd.DataFrame({"low": [0.98, 0.75, 0.35], "high": [1.0, 0.85, 0.55]}, index=[0, 1, 2])
    floor_bounds = pd.DataFrame(
        {"low": [0.5, 0.45, 0.3], "high": [0.7, 0.55, 0.5]}, index=[0, 1, 2]
    )
    assert floor_sentence(to_base, floor, bounds, floor_bounds) == (
        "Linear CKA of final to base against the floor of a seeded random copy of the model: "
        "layer 0 0.990 (floor 0.600, 98% of the way to 1), layer 1 0.800 (floor 0.500, 60% of "
        "the way to 1), layer 2 0.450 (floor 0.400, 8% of the way to 1). At layers 2 its 95% "
        "interval overlaps the floor's: there final is no more like base than like an "
        "untrained network, and the similarity says nothing about fine-tuning."
    )
    # Without intervals the point values decide: every layer is above its floor.
    assert floor_sentence(to_base, floor).endswith("Every layer clears its floor.")


def test_report_draws_and_states_the_floor(tiny_run):
    _, outcome = tiny_run
    report = Path(outcome["report"]).read_text()
    assert "against the floor of a seeded random copy of the model" in report
    assert "Dashed: the same metric of final against a seeded random initialisation" in report
