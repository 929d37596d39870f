"""Crosscoders of base and fine-tuned from the store: planted features sorted into groups.

The crosscoder is a dictionary over both models (tasks.dictionary); its loss, gradients,
files and resume are tested with the other architectures (test_dictionary_*.py). Here: does
it sort planted base-only, shared and fine-tuned-only features, and give only shared latents
for identical models?
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from factories import make_activation_store
from planted import planted_pair
from safetensors.numpy import load_file

from layerdrift.config import DictionaryConfig, SAEConfig, TrainingConfig
from layerdrift.tasks.dictionary import Job, make_loader, train_dictionaries
from layerdrift.tasks.features.crosscoder import classify_latents, relative_norms

D_IN, TOKENS_PER_EXAMPLE = 32, 20


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
    split = SAEConfig(heldout_fraction=heldout_fraction)
    return make_loader(
        xr.open_zarr(url, chunks=None), [("base", 2), ("final", 2)], split, batch_size
    )


def _train(url: str, folder: str, n_steps: int = 600, architecture: str = "topk"):
    dictionary = DictionaryConfig(
        architecture=architecture, expansion_factor=2, k=4, l1_coefficient=1.5e-3
    )
    training = TrainingConfig(
        batch_size=256, token_budget=256 * n_steps, learning_rate=3e-3, warmup_steps=20,
        dead_tokens=50_000, checkpoint_every=10_000,
    )  # fmt: skip
    job = Job(folder, (("base", 2), ("final", 2)))
    ds = xr.open_zarr(url, chunks=None)
    return train_dictionaries(ds, [job], dictionary, training, SAEConfig())[0]


def _groups(model) -> np.ndarray:
    norms = model.decoder_directions().norm(dim=2).numpy()
    return classify_latents(relative_norms(norms), 0.1, 0.9)


def _planted_groups(model, pair) -> np.ndarray:
    """The crosscoder group of the latent that best matches each planted feature."""
    W = model.decoder_directions().numpy().reshape(model.d_sae, -1)
    P = pair.D.reshape(len(pair.D), -1)
    cos = (P / np.linalg.norm(P, axis=1, keepdims=True)) @ (
        W / np.linalg.norm(W, axis=1, keepdims=True)
    ).T
    assert np.median(cos.max(axis=1)) > 0.9
    return _groups(model)[cos.argmax(axis=1)]


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_crosscoder_sorts_planted_features(tmp_path, architecture):
    pair = planted_pair(np.random.default_rng(1), n_tokens=20_000, d_in=D_IN)
    url = _store(tmp_path, pair.x)
    steps = 600 if architecture == "topk" else 1200
    model = _train(url, str(tmp_path / "cc"), steps, architecture)
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
    assert (_groups(model) == 1).all()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    url = _store(tmp_path, np.zeros((200, 2, 4), dtype=np.float32))
    ds = xr.open_zarr(url, chunks=None)
    with pytest.raises(KeyError, match="step-9"):
        make_loader(ds, [("base", 2), ("step-9", 2)], SAEConfig(), 10)


# One training in a fresh interpreter: what a run's features stage does for one layer.
TRAIN_SCRIPT = """
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(1)
    from test_features_crosscoder import _train
    _train(sys.argv[2], sys.argv[3], n_steps=40, architecture="relu")
"""


def test_two_fresh_processes_train_identical_crosscoders(tmp_path):
    """Nothing that differs between interpreters (hash seeds, set order, memory addresses)
    reaches the weights: two processes write the same crosscoder to the bit."""
    pair = planted_pair(np.random.default_rng(4), n_tokens=4_000, d_in=D_IN)
    url = _store(tmp_path, pair.x)
    tests = str(Path(__file__).parent)
    folders = [tmp_path / "first", tmp_path / "second"]
    for folder, hash_seed in zip(folders, ("1", "2"), strict=True):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(TRAIN_SCRIPT), tests, url, str(folder)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.relative_to(folders[0]) for p in folders[0].rglob("*.safetensors"))
    assert files, "no weights were written"
    for name in files:
        first, second = load_file(folders[0] / name), load_file(folders[1] / name)
        assert first.keys() == second.keys(), name
        for key, value in first.items():
            assert np.array_equal(value, second[key]), (name, key)
