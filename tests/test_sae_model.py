"""SAE models: planted-feature recovery, forward = decode(encode), constraints, file round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from layerdrift.storage.saes import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, load_sae_files
from layerdrift.tasks.sae.files import load_sae, save_sae
from layerdrift.tasks.sae.model import SAESpec, SparseAutoencoder
from layerdrift.tasks.sae.synthetic import best_cosines, planted_activations, planted_dictionary
from layerdrift.tasks.sae.train import Schedule, Trainer

# Planted data: 48 unit directions in 32 dims, 3 active per token. A TopK SAE (128 latents,
# k = 3) trained for 300 steps of 256 tokens reaches mean best cosine ~0.99 and FVU ~0.05;
# the bounds below leave room for other platforms' float differences.
FVU_BOUND = 0.15
COSINE_BOUND = 0.9


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices run fastest (and steadiest on a shared machine) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _spec(**kw) -> SAESpec:
    return SAESpec(**{"d_in": 32, "d_sae": 128, "k": 3, **kw})


def _trained(architecture: str = "topk", steps: int = 300, **kw):
    rng = np.random.default_rng(0)
    dictionary = planted_dictionary(48, 32, rng)
    x = planted_activations(20_000, dictionary, 3, rng)
    spec = _spec(architecture=architecture, **kw)
    model = SparseAutoencoder(spec, torch.Generator().manual_seed(0))
    model.init_from_sample(torch.from_numpy(x[:2000]))
    schedule = Schedule(n_steps=steps, learning_rate=3e-3, warmup_steps=10, dead_tokens=5000)
    trainer = Trainer([model], schedule)
    batch_rng = np.random.default_rng(1)
    trainer.fit(x[batch_rng.integers(0, len(x), 256)][:, None] for _ in iter(int, 1))
    return model, dictionary, torch.from_numpy(x[:4000]), trainer


def _fvu(x: torch.Tensor, recon: torch.Tensor) -> float:
    return float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_topk_recovers_planted_directions():
    model, dictionary, x, _ = _trained()
    cosines = best_cosines(dictionary, model.W_dec.detach().numpy())
    assert cosines.mean() >= COSINE_BOUND
    with torch.no_grad():
        assert _fvu(x, model(x)) < FVU_BOUND
    norms = model.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


def test_relu_l1_learns_and_sparsifies():
    dense, _, x, _ = _trained("relu", steps=150, l1_coefficient=0.0)
    sparse, *_ = _trained("relu", steps=150, l1_coefficient=0.1)
    with torch.no_grad():
        assert _fvu(x, dense(x)) < FVU_BOUND
        l0_dense = (dense.encode(x) > 0).sum(1).float().mean()
        l0_sparse = (sparse.encode(x) > 0).sum(1).float().mean()
        assert l0_sparse < 0.5 * l0_dense


def test_forward_is_decode_of_encode_and_l0_is_k(rng):
    model = SparseAutoencoder(_spec(k=5), torch.Generator().manual_seed(0))
    x = torch.from_numpy(rng.normal(size=(64, 32)).astype(np.float32)) + 2.0
    model.init_from_sample(x)
    with torch.no_grad():
        model.b_enc.fill_(10.0)  # every pre-activation positive: exactly k latents fire
        f = model.encode(x)
        torch.testing.assert_close(model(x), model.decode(f), atol=1e-5, rtol=1e-5)
        assert ((f > 0).sum(dim=1) == 5).all()
        # the encoder against the formula written out
        pre = (x * model.scale - model.b_dec) @ model.W_enc + model.b_enc
        top = pre.topk(5, dim=1)
        expected = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        torch.testing.assert_close(f, expected)
        torch.testing.assert_close(model.decode(f), (f @ model.W_dec + model.b_dec) / model.scale)


def test_normalisation_scale_sets_mean_squared_norm(rng):
    x = torch.from_numpy(rng.normal(scale=7.0, size=(500, 32)).astype(np.float32))
    model = SparseAutoencoder(_spec())
    model.init_from_sample(x)
    mean_sq = float(((x * model.scale) ** 2).sum(1).mean())
    assert mean_sq == pytest.approx(32.0, rel=1e-4)


def test_decoder_gradient_has_no_parallel_component(rng):
    model = SparseAutoencoder(_spec())
    x = torch.from_numpy(rng.normal(size=(64, 32)).astype(np.float32))
    loss, _, _ = model.loss(x)
    loss.backward()
    model.after_backward()
    parallel = (model.W_dec.grad * model.W_dec).sum(dim=1)
    assert parallel.abs().max() < 1e-6


def test_aux_loss_only_with_dead_latents(rng):
    model = SparseAutoencoder(_spec())
    x = torch.from_numpy(rng.normal(size=(64, 32)).astype(np.float32))
    _, parts, fired = model.loss(x, torch.zeros(128, dtype=torch.bool))
    assert parts["aux"] == 0.0 and fired.dtype == torch.bool
    _, parts, _ = model.loss(x, ~fired)
    assert parts["aux"] > 0.0


def test_save_load_identical_outputs_and_saelens_cfg(tmp_path, rng):
    model, *_ = _trained(steps=20)
    url = str(tmp_path / "sae")
    save_sae(model, url)
    cfg = json.loads((tmp_path / "sae" / SAE_CFG_FILENAME).read_text())
    for name in ("d_in", "d_sae", "architecture", "dtype", "device", "hook_name", "hook_layer"):
        assert name in cfg
    assert cfg["normalize_activations"] == "none" and cfg["k"] == 3
    assert cfg["scale_factor"] == pytest.approx(float(model.scale))
    weights = load_file(tmp_path / "sae" / SAE_WEIGHTS_FILENAME)
    assert weights["W_enc"].shape == (32, 128) and weights["W_dec"].shape == (128, 32)
    assert weights["b_enc"].shape == (128,) and weights["b_dec"].shape == (32,)
    # the file's weights act on raw activations, SAELens style
    x = torch.from_numpy(rng.normal(size=(50, 32)).astype(np.float32))
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    top = pre.topk(3, dim=1)
    f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    loaded = load_sae(url)
    with torch.no_grad():
        by_file = f @ weights["W_dec"] + weights["b_dec"]
        torch.testing.assert_close(by_file, model(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.encode(x), model.encode(x), atol=1e-5, rtol=1e-5)
    assert loaded.spec.k == 3 and loaded.spec.architecture == "topk"


def test_load_missing_sae_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the sae stage"):
        load_sae_files(str(tmp_path / "nothing"))


def test_sparse_backward_matches_dense_autograd(rng):
    """The TopK loss's hand-written sparse backward equals plain autograd on the formula."""
    model = SparseAutoencoder(_spec(k=4, aux_k=6), torch.Generator().manual_seed(0))
    x = torch.from_numpy(rng.normal(size=(40, 32)).astype(np.float32)) + 0.5
    model.init_from_sample(x)
    dead = torch.zeros(128, dtype=torch.bool)
    dead[::3] = True
    loss, _, _ = model.loss(x, dead)
    loss.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    xn = x * model.scale
    pre = (xn - model.b_dec) @ model.W_enc + model.b_enc
    top = pre.topk(4, dim=1)
    f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    recon = f @ model.W_dec + model.b_dec
    residual = (xn - recon).detach()
    dead_pre = pre.masked_fill(~dead, float("-inf")).topk(6, dim=1)
    f_aux = torch.zeros_like(pre).scatter(1, dead_pre.indices, dead_pre.values.relu())
    aux = ((f_aux @ model.W_dec - residual) ** 2).mean() / (residual**2).mean()
    reference = ((recon - xn) ** 2).mean() + model.spec.aux_coefficient * aux
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    reference.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
