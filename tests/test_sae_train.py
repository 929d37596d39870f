"""Training from the store: resume after a failure, several layers from one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from factories import make_activation_store

from layerdrift.config import SAEConfig
from layerdrift.storage.saes import load_sae_files, load_train_state
from layerdrift.tasks.sae import train as train_module
from layerdrift.tasks.sae.fit import train_saes
from layerdrift.tasks.sae.synthetic import planted_activations, planted_dictionary

CFG = SAEConfig(
    expansion_factor=4,
    k=4,
    batch_size=64,
    token_budget=64 * 12,
    checkpoint_every=4,
    warmup_steps=2,
    learning_rate=1e-3,
    dead_tokens=128,  # small, so the AuxK path runs too
    buffer_chunks=2,
)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def store(tmp_path, rng):
    counts = [int(c) for c in rng.integers(5, 20, 150)]
    dictionary = planted_dictionary(24, 16, rng)
    acts = np.stack(
        [
            np.stack([planted_activations(sum(counts), dictionary, 2, rng) for _ in range(2)])
            for _ in range(2)
        ]
    ).astype(np.float16)
    url = make_activation_store(str(tmp_path / "a.zarr"), acts, counts, token_chunk=128)
    return xr.open_zarr(url, chunks=None)


def _weights(url: str) -> dict[str, torch.Tensor]:
    return load_sae_files(url)[1]


def test_resume_after_failure_equals_uninterrupted_run(tmp_path, store, monkeypatch):
    clean = str(tmp_path / "clean")
    train_saes(store, "base", [1], [clean], CFG)

    broken = str(tmp_path / "broken")
    original = train_module.Trainer.train_step

    def failing(self, batch):
        if self.step == 9:
            raise RuntimeError("injected failure")
        return original(self, batch)

    monkeypatch.setattr(train_module.Trainer, "train_step", failing)
    with pytest.raises(RuntimeError, match="injected"):
        train_saes(store, "base", [1], [broken], CFG)
    state = load_train_state(broken)
    assert state is not None and state.extra["step"] == 8
    monkeypatch.setattr(train_module.Trainer, "train_step", original)

    train_saes(store, "base", [1], [broken], CFG)
    assert load_train_state(broken) is None  # cleared once the SAE is saved
    expected, got = _weights(clean), _weights(broken)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(expected[name], got[name]), name
    assert load_sae_files(broken)[0]["train_steps"] == 12


def test_several_layers_from_one_pass_equal_one_at_a_time(tmp_path, store):
    joint = [str(tmp_path / "joint-0"), str(tmp_path / "joint-1")]
    models = train_saes(store, "final", [0, 1], joint, CFG)
    alone = train_saes(store, "final", [1], [str(tmp_path / "alone-1")], CFG)[0]
    torch.testing.assert_close(models[1].W_dec, alone.W_dec, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(models[0].W_dec, models[1].W_dec)
    cfg = load_sae_files(joint[0])[0]
    assert cfg["hook_layer"] == 0 and cfg["checkpoint"] == "final"


def test_finished_sae_is_loaded_not_retrained(tmp_path, store, monkeypatch):
    url = str(tmp_path / "sae")
    first = train_saes(store, "base", [0], [url], CFG)[0]
    monkeypatch.setattr(train_module.Trainer, "fit", lambda *a, **k: pytest.fail("retrained"))
    again = train_saes(store, "base", [0], [url], CFG)[0]
    torch.testing.assert_close(again.W_dec, first.W_dec, rtol=1e-5, atol=1e-6)


def test_schedule_warms_up_and_decays():
    schedule = train_module.Schedule(n_steps=100, learning_rate=1.0, warmup_steps=10)
    lrs = [schedule.lr_at(step) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] == 1.0 and lrs[80] == pytest.approx(1.0)  # decay covers the last 20 steps
    assert lrs[99] == pytest.approx(1 / 20) and (np.diff(lrs[10:]) <= 0).all()
