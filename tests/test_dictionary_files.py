"""Dictionary files: SAELens 6 layout, unit-norm decoders, raw-unit SAEs, round trips.

The SAELens loader itself is exercised in test_saelens.py; here the files are checked
against the layout and against the formulas SAELens applies to them.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from layerdrift.storage.saes import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, load_sparsity
from layerdrift.tasks.dictionary import (
    ARCHITECTURES,
    DictionarySpec,
    build,
    folder_current,
    load_dictionary,
    save_dictionary,
)
from layerdrift.tasks.dictionary.files import LAYOUT, SAELENS_VERSION

D, S = 8, 24
SAELENS_ARCHITECTURES = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
SAELENS_ARCHITECTURES["relu"] = "standard"


def trained_like(architecture: str, n_models: int = 1, seed: int = 0):
    """A dictionary with non-trivial biases, free decoder norms and thresholds, and a batch."""
    g = torch.Generator().manual_seed(seed)
    model = build(DictionarySpec(D, S, architecture, n_models, k=3), g)
    x = torch.randn(64, n_models, D, generator=g) * 4.0 + 1.0
    model.init_from_sample(x)
    with torch.no_grad():
        model.b_enc.copy_(0.2 * torch.randn(S, generator=g))
        if not model.unit_norm_decoder:
            model.W_dec.mul_(torch.rand(S, 1, generator=g) + 0.5)
        if hasattr(model, "threshold"):
            model.threshold.fill_(0.3) if architecture == "batchtopk" else model.threshold.copy_(
                0.5 * torch.rand(S, generator=g)
            )
    return model, (x[:, 0] if n_models == 1 else x)


def _save(model, url, density=None):
    metadata = {"model_name": "some/model", "hook_name": "blocks.0.hook_normalized_resid_post"}
    provenance = {"store_generation": "g", "layer": 1}
    save_dictionary(model, str(url), metadata, provenance, density)


@pytest.mark.parametrize("n_models", [1, 2], ids=["sae", "crosscoder"])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_round_trip_gives_the_same_codes_and_reconstruction(tmp_path, architecture, n_models):
    model, x = trained_like(architecture, n_models)
    with torch.no_grad():
        recon = model(x)
        _save(model, tmp_path / "d", density=torch.full((S,), 0.01))  # folds decoder norms
        torch.testing.assert_close(model(x), recon, rtol=1e-5, atol=1e-5)
        codes = model.encode(x)
    loaded = load_dictionary(str(tmp_path / "d"))
    assert type(loaded) is type(model)
    for name in ("d_model", "d_sae", "n_models", *model.hyperparameters):
        assert getattr(loaded.spec, name) == getattr(model.spec, name), name
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(x), recon, rtol=1e-5, atol=1e-5)
    assert folder_current(str(tmp_path / "d"), "g") and not folder_current(str(tmp_path / "d"), "h")
    torch.testing.assert_close(load_sparsity(str(tmp_path / "d")), torch.full((S,), -2.0))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_sae_file_is_saelens_6_layout_on_raw_activations(tmp_path, architecture):
    model, x = trained_like(architecture)
    _save(model, tmp_path / "sae")
    with torch.no_grad():
        codes, recon = model.encode(x), model(x)
    cfg = json.loads((tmp_path / "sae" / SAE_CFG_FILENAME).read_text())
    assert cfg["architecture"] == SAELENS_ARCHITECTURES[architecture]
    assert (cfg["d_in"], cfg["d_sae"], cfg["normalize_activations"]) == (D, S, "none")
    meta = cfg["metadata"]
    assert meta["sae_lens_version"] == SAELENS_VERSION and meta["model_name"] == "some/model"
    assert meta["layerdrift"]["architecture"] == architecture
    assert meta["layerdrift"]["layout"] == LAYOUT and meta["layerdrift"]["units"] == "model"
    assert meta["layerdrift"]["input_scale"] == [pytest.approx(float(model.scale[0]))]
    w = load_file(tmp_path / "sae" / SAE_WEIGHTS_FILENAME)
    norms = w["W_dec"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # SAELens's inference formulas on the file's tensors, with raw activations in and out.
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        assert cfg["k"] == 3 and cfg["rescale_acts_by_decoder_norm"] is False
        top = pre.topk(3, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    elif cfg["architecture"] == "jumprelu":
        f = pre.relu() * (pre > w["threshold"])
    else:
        f = pre.relu()
    torch.testing.assert_close(f, codes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f @ w["W_dec"] + w["b_dec"], recon, rtol=1e-4, atol=1e-4)


def test_crosscoder_file_states_its_per_model_scales(tmp_path):
    model, x = trained_like("relu", n_models=2)
    with torch.no_grad():
        recon = model(x)
    _save(model, tmp_path / "cc")
    cfg = json.loads((tmp_path / "cc" / SAE_CFG_FILENAME).read_text())
    info = cfg["metadata"]["layerdrift"]
    assert cfg["d_in"] == 2 * D and (info["n_models"], info["d_model"]) == (2, D)
    assert info["units"] == "normalised" and len(info["input_scale"]) == 2
    w = load_file(tmp_path / "cc" / SAE_WEIGHTS_FILENAME)
    norms = w["W_dec"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    scale = torch.tensor(info["input_scale"])
    xn = (x * scale[None, :, None]).reshape(len(x), 2 * D)  # [s_0·x_0, s_1·x_1]
    f = ((xn - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu()
    by_file = (f @ w["W_dec"] + w["b_dec"]).view(len(x), 2, D) / scale[None, :, None]
    torch.testing.assert_close(by_file, recon, rtol=1e-4, atol=1e-4)


def test_unknown_architecture_in_a_file_is_a_clear_error(tmp_path):
    model, _ = trained_like("topk")
    _save(model, tmp_path / "sae")
    path = tmp_path / "sae" / SAE_CFG_FILENAME
    cfg = json.loads(path.read_text())
    cfg["architecture"] = "gated"
    del cfg["metadata"]["layerdrift"]["architecture"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown dictionary architecture 'gated': use one of"):
        load_dictionary(str(tmp_path / "sae"))


def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the stage that trains it"):
        load_dictionary(str(tmp_path / "nothing"))


def test_a_folder_of_the_earlier_layout_is_not_current(tmp_path):
    model, _ = trained_like("topk")
    _save(model, tmp_path / "sae")
    path = tmp_path / "sae" / SAE_CFG_FILENAME
    cfg = json.loads(path.read_text())
    cfg["metadata"]["layerdrift"]["layout"] = 1
    path.write_text(json.dumps(cfg))
    assert not folder_current(str(tmp_path / "sae"), "g")


def test_a_training_state_cut_short_counts_as_none(tmp_path, caplog, monkeypatch):
    """A kill while a state is rewritten never leaves ``state.json`` over truncated tensors;
    a state cut short by an older writer is read as none (training restarts), with a
    warning, instead of failing every resume."""
    from layerdrift.storage.saes import (
        STATE_JSON,
        STATE_MODEL,
        TRAIN_STATE_DIR,
        TrainState,
        load_train_state,
        save_train_state,
    )

    url = str(tmp_path / "sae")
    weights = torch.arange(6.0).reshape(2, 3)
    state = TrainState({"W": weights}, {"step": 1, "m": [torch.ones(2)]}, {"step": 3}, {})
    save_train_state(url, state)
    folder = tmp_path / "sae" / TRAIN_STATE_DIR
    assert torch.equal(load_train_state(url).model["W"], weights)

    def killed(tensors):  # the process dies while the new tensors are being written
        raise KeyboardInterrupt

    monkeypatch.setattr("layerdrift.storage.saes.save_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        save_train_state(url, state)
    assert not (folder / STATE_JSON).exists() and load_train_state(url) is None
    monkeypatch.undo()
    save_train_state(url, state)

    model = folder / STATE_MODEL
    model.write_bytes(model.read_bytes()[:5])  # state.json present, tensors cut short
    assert (folder / STATE_JSON).is_file()
    with caplog.at_level("WARNING"):
        assert load_train_state(url) is None
    assert "unreadable" in caplog.text
