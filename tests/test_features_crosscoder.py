"""Crosscoder: sorting planted features, identical models, store loader, save/load, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from factories import make_activation_store

from layerdrift.config import SAEConfig
from layerdrift.tasks.features.config import FeaturesConfig
from layerdrift.tasks.features.crosscoder import (
    Crosscoder,
    CrosscoderCfg,
    classify_latents,
    load_crosscoder,
    relative_norms,
    save_crosscoder,
)
from layerdrift.tasks.features.synthetic import planted_pair
from layerdrift.tasks.features.train import pair_loader, train_crosscoder
from layerdrift.tasks.sae.loader import ActivationLoader
from layerdrift.tasks.sae.train import Schedule

D_IN, D_SAE, TOKENS_PER_EXAMPLE = 32, 64, 20


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _store(tmp_path, x: np.ndarray, name: str = "acts.zarr") -> str:
    """A store with checkpoints base/final and one layer (2) from paired x [n, 2, d]."""
    acts = x.transpose(1, 0, 2)[:, None]  # [2, 1, n, d]
    n_ex = x.shape[0] // TOKENS_PER_EXAMPLE
    padded = np.zeros((2, 3, n_ex * TOKENS_PER_EXAMPLE, x.shape[2]), dtype=np.float32)
    padded[:, 2:3] = acts[:, :, : n_ex * TOKENS_PER_EXAMPLE]
    path = str(tmp_path / name)
    return make_activation_store(path, padded, [TOKENS_PER_EXAMPLE] * n_ex, token_chunk=1000)


def loader_for(url: str, batch_size: int = 256, heldout_fraction: float = 0.1):
    """A (base, final) loader over layer 2 of the test store."""
    sae = SAEConfig(heldout_fraction=heldout_fraction)
    return pair_loader(
        xr.open_zarr(url, chunks=None), 2, FeaturesConfig(batch_size=batch_size), sae
    )


class FailingLoader(ActivationLoader):
    """A loader whose stream raises after ``fail_after`` batches (an injected crash)."""

    fail_after: int | None = None

    def batches(self, start_step: int = 0):
        for i, batch in enumerate(super().batches(start_step), start=start_step):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("injected failure")
            yield batch


def _train(url: str, folder: str, n_steps: int = 600, fail_after: int | None = None, **kw):
    cfg = CrosscoderCfg(d_in=D_IN, d_sae=D_SAE, k=4, layer=2, **kw)
    loader = loader_for(url)
    loader.__class__ = FailingLoader
    loader.fail_after = fail_after
    schedule = Schedule(n_steps, 3e-3, warmup_steps=20, dead_tokens=50_000, checkpoint_every=20)
    return train_crosscoder(loader, cfg, folder, schedule)


def _planted_groups(model: Crosscoder, pair) -> np.ndarray:
    """The crosscoder group of the latent that best matches each planted feature."""
    W = model.W_dec.detach().numpy().reshape(model.cfg.d_sae, -1)
    P = pair.D.reshape(len(pair.D), -1)
    cos = (P / np.linalg.norm(P, axis=1, keepdims=True)) @ (
        W / np.linalg.norm(W, axis=1, keepdims=True)
    ).T
    assert np.median(cos.max(axis=1)) > 0.9
    groups = classify_latents(relative_norms(model.decoder_norms().numpy()), 0.1, 0.9)
    return groups[cos.argmax(axis=1)]


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_crosscoder_sorts_planted_features(tmp_path, architecture):
    pair = planted_pair(np.random.default_rng(1), n_tokens=20_000, d_in=D_IN)
    url = _store(tmp_path, pair.x)
    kw = {"architecture": architecture, "l1_coefficient": 1.5e-3}
    model = _train(url, str(tmp_path / "cc"), n_steps=600 if architecture == "topk" else 1200, **kw)
    accuracy = (_planted_groups(model, pair) == pair.group).mean()
    assert accuracy >= 0.9, accuracy
    held = torch.as_tensor(loader_for(url).heldout()[0])
    with torch.no_grad():
        err = (model(held) - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum()
    assert err < 0.1


def test_identical_models_give_only_shared_latents(tmp_path):
    pair = planted_pair(np.random.default_rng(2), n_tokens=10_000, d_in=D_IN)
    x = np.repeat(pair.x[:, :1], 2, axis=1)
    model = _train(_store(tmp_path, x), str(tmp_path / "cc"), n_steps=300)
    groups = classify_latents(relative_norms(model.decoder_norms().numpy()), 0.1, 0.9)
    assert (groups == 1).all()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    url = _store(tmp_path, np.zeros((200, 2, 4), dtype=np.float32))
    fcfg = FeaturesConfig(finetuned="step-9", batch_size=10)
    with pytest.raises(KeyError, match="step-9"):
        pair_loader(xr.open_zarr(url, chunks=None), 2, fcfg)


def test_save_load_round_trip(tmp_path):
    cfg = CrosscoderCfg(d_in=8, d_sae=16, k=3, checkpoints=("base", "final"), layer=1)
    model = Crosscoder(cfg, torch.Generator().manual_seed(0))
    model.scale.fill_(2.5)
    save_crosscoder(model, str(tmp_path / "cc"))
    again = load_crosscoder(str(tmp_path / "cc"))
    assert again.cfg == cfg
    x = torch.randn(5, 2, 8)
    torch.testing.assert_close(again(x), model(x))
    assert (again.encode(x) > 0).sum(dim=1).le(3).all()
    with pytest.raises(FileNotFoundError, match="train it first"):
        load_crosscoder(str(tmp_path / "nothing"))


def test_resume_after_failure_matches_uninterrupted_run(tmp_path):
    pair = planted_pair(np.random.default_rng(4), n_tokens=6_000, d_in=D_IN)
    url = _store(tmp_path, pair.x)
    whole = _train(url, str(tmp_path / "whole"), n_steps=70)
    with pytest.raises(RuntimeError, match="injected"):
        _train(url, str(tmp_path / "resumed"), n_steps=70, fail_after=50)
    assert (tmp_path / "resumed" / "train-state" / "state.json").exists()
    resumed = _train(url, str(tmp_path / "resumed"), n_steps=70)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    assert not (tmp_path / "resumed" / "train-state").exists()


def test_topk_loss_and_gradients_match_the_dense_crosscoder_formula():
    """The flattened sparse TopK objective equals the per-model crosscoder loss, gradients too."""
    cfg = CrosscoderCfg(d_in=8, d_sae=24, k=3, layer=0)
    model = Crosscoder(cfg, torch.Generator().manual_seed(0))
    x = torch.randn(30, 2, 8, generator=torch.Generator().manual_seed(1)) + 0.3
    x[:, 1] *= 3.0  # the two models at different scales
    model.init_from_sample(x)
    dead = torch.zeros(24, dtype=torch.bool)
    dead[::4] = True
    loss, _, _ = model.loss(x, dead)
    loss.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    xn = x * model.scale[None, :, None]
    pre = torch.einsum("bmi,mis->bs", xn - model.b_dec, model.W_enc) + model.b_enc
    top = pre.topk(3, dim=1)
    f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    recon = torch.einsum("bs,smi->bmi", f, model.W_dec) + model.b_dec
    residual = (xn - recon).detach()
    k_aux = min(cfg.d_in // 2, int(dead.sum()))
    dead_top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=1)
    f_aux = torch.zeros_like(pre).scatter(1, dead_top.indices, dead_top.values.relu())
    aux_recon = torch.einsum("bs,smi->bmi", f_aux, model.W_dec)
    aux = ((aux_recon - residual) ** 2).mean() / (residual**2).mean()
    reference = ((recon - xn) ** 2).mean() + aux / 32
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    reference.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
