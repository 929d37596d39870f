"""The train-or-resume lifecycle from a store: SAEs and crosscoders through one function.

Resume after an injected failure equals an uninterrupted run (SAE and crosscoder), several
layers from one pass equal one at a time, a finished folder is loaded and not retrained, a
folder of another store generation is trained again, and each architecture learns planted
features from the store.
"""

from __future__ import annotations

import numpy as np
import pytest
import tiny_runs
import torch
import xarray as xr
from factories import make_activation_store
from planted import best_cosines, planted_activations, planted_dictionary

from layerdrift.config import DictionaryConfig, SAEConfig, TrainingConfig
from layerdrift.storage.saes import load_sae_files, load_train_state
from layerdrift.tasks.dictionary import Job, layerdrift_info, train_dictionaries
from layerdrift.tasks.dictionary import train as train_module
from layerdrift.tasks.dictionary.train import Schedule

DICT = DictionaryConfig(expansion_factor=4, k=4)
TRAINING = TrainingConfig(
    batch_size=64,
    token_budget=64 * 12,
    checkpoint_every=4,
    warmup_steps=2,
    learning_rate=1e-3,
    dead_tokens=128,  # small, so the AuxK path runs too
)
SPLIT = SAEConfig(buffer_chunks=2)


@pytest.fixture(autouse=True)
def single_thread():
    with tiny_runs.one_thread():
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    counts = [int(c) for c in rng.integers(5, 20, 150)]
    dictionary = planted_dictionary(24, 16, rng)
    acts = np.stack(
        [
            np.stack([planted_activations(sum(counts), dictionary, 2, rng) for _ in range(2)])
            for _ in range(2)
        ]
    ).astype(np.float16)
    path = str(tmp_path_factory.mktemp("store") / "a.zarr")
    return xr.open_zarr(make_activation_store(path, acts, counts, token_chunk=128), chunks=None)


def _train(store, jobs, dictionary=DICT, training=TRAINING, generation="g"):
    return train_dictionaries(store, jobs, dictionary, training, SPLIT, store_generation=generation)


def _sae(url, checkpoint="base", layer=1) -> Job:
    return Job(str(url), ((checkpoint, layer),), {"model_name": "m"})


def _crosscoder(url, layer=1) -> Job:
    return Job(str(url), (("base", layer), ("final", layer)))


def _weights(url: str) -> dict[str, torch.Tensor]:
    return load_sae_files(url)[1]


def _fail_at(monkeypatch, step: int) -> None:
    original = train_module.Trainer.train_step

    def failing(self, batch):
        if self.step == step:
            raise RuntimeError("injected failure")
        return original(self, batch)

    monkeypatch.setattr(train_module.Trainer, "train_step", failing)


@pytest.mark.parametrize(
    ("make_job", "architecture"),
    [(_sae, "topk"), (_crosscoder, "relu"), (_sae, "jumprelu"), (_crosscoder, "batchtopk")],
)
def test_resume_after_failure_equals_uninterrupted_run(
    tmp_path, store, monkeypatch, make_job, architecture
):
    dictionary = DICT.model_copy(update={"architecture": architecture})
    clean = make_job(tmp_path / "clean")
    _train(store, [clean], dictionary)

    broken = make_job(tmp_path / "broken")
    _fail_at(monkeypatch, 9)
    with pytest.raises(RuntimeError, match="injected"):
        _train(store, [broken], dictionary)
    state = load_train_state(broken.url)
    assert state is not None and state.extra["step"] == 8
    monkeypatch.undo()

    _train(store, [broken], dictionary)
    assert load_train_state(broken.url) is None  # cleared once the dictionary is saved
    expected, got = _weights(clean.url), _weights(broken.url)
    assert set(expected) == set(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert layerdrift_info(load_sae_files(broken.url)[0])["train_steps"] == 12


def test_several_layers_from_one_pass_equal_one_at_a_time(tmp_path, store):
    joint = [_sae(tmp_path / "joint-0", "final", 0), _sae(tmp_path / "joint-1", "final", 1)]
    models = _train(store, joint)
    alone = _train(store, [_sae(tmp_path / "alone-1", "final", 1)])[0]
    torch.testing.assert_close(models[1].W_dec, alone.W_dec, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(models[0].W_dec, models[1].W_dec)
    info = layerdrift_info(load_sae_files(joint[0].url)[0])
    assert info["layer"] == 0 and info["checkpoints"] == ["final"]


def test_finished_folder_is_loaded_and_another_store_trains_again(tmp_path, store, monkeypatch):
    job = _sae(tmp_path / "sae")
    first = _train(store, [job])[0]
    monkeypatch.setattr(train_module.Trainer, "fit", lambda *a, **k: pytest.fail("retrained"))
    again = _train(store, [job])[0]
    torch.testing.assert_close(again.W_dec, first.W_dec, rtol=0, atol=0)
    monkeypatch.undo()
    _train(store, [job], generation="rebuilt")
    assert layerdrift_info(load_sae_files(job.url)[0])["store_generation"] == "rebuilt"


@pytest.mark.parametrize(
    ("architecture", "settings"),
    [
        ("topk", {"k": 2}),
        ("batchtopk", {"k": 2}),
        ("jumprelu", {"l0_coefficient": 0.5}),
        ("relu", {"l1_coefficient": 0.1}),
    ],
)
def test_each_architecture_finds_the_planted_directions(tmp_path_factory, architecture, settings):
    """24 unit directions in 16 dims, 2 active per token: 64 latents recover most of them."""
    rng = np.random.default_rng(3)
    counts = [20] * 400
    planted = planted_dictionary(24, 16, rng)
    acts = planted_activations(sum(counts), planted, 2, rng)[None, None]
    path = str(tmp_path_factory.mktemp("planted") / "p.zarr")
    url = make_activation_store(path, acts, counts, checkpoints=["base"], token_chunk=1000)
    ds = xr.open_zarr(url, chunks=None)
    dictionary = DictionaryConfig(architecture=architecture, expansion_factor=4, **settings)
    training = TrainingConfig(
        batch_size=256, token_budget=256 * 500, learning_rate=6e-3, warmup_steps=10,
        dead_tokens=5000, checkpoint_every=10_000,
    )  # fmt: skip
    job = Job(str(tmp_path_factory.mktemp("d") / architecture), (("base", 0),))
    (model,) = train_dictionaries(ds, [job], dictionary, training, SPLIT)
    cosines = best_cosines(planted, model.decoder_directions()[:, 0].numpy())
    assert np.median(cosines) > 0.9, np.sort(cosines)
    x = torch.from_numpy(acts[0, 0, :4000])
    with torch.no_grad():
        fvu = float(((x - model(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        l0 = float((model.encode(x) > 0).sum(dim=1).float().mean())
    assert fvu < 0.2 and l0 < 8, (fvu, l0)


def test_schedule_warms_up_and_decays():
    schedule = Schedule(n_steps=100, learning_rate=1.0, warmup_steps=10)
    lrs = [schedule.lr_at(step) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] == 1.0 and lrs[80] == pytest.approx(1.0)  # decay covers the last 20 steps
    assert lrs[99] == pytest.approx(1 / 20) and (np.diff(lrs[10:]) <= 0).all()


def test_resumed_fused_adam_updates_a_transposed_parameter_as_before(tmp_path):
    """An SAE's W_enc is stored transposed and its saved Adam moments come back contiguous;
    torch's fused Adam walks parameter, gradient and moments as flat memory, so a resume
    must give the moments the parameter's layout again (:func:`restore_layouts`)."""
    from layerdrift.storage.saes import TrainState, save_train_state
    from layerdrift.tasks.optimizers import restore_layouts

    generator = torch.Generator().manual_seed(0)
    start = torch.randn(24, 8, generator=generator)
    grads = [torch.randn(8, 24, generator=generator) for _ in range(6)]

    def fresh():
        weight = torch.nn.Parameter(start.clone().t())  # strides (1, 8), as W_enc's
        return weight, torch.optim.Adam([weight], lr=0.1, fused=True)

    def steps(weight, optimizer, chosen):
        for grad in chosen:
            optimizer.zero_grad()
            weight.grad = torch.empty_like(weight).copy_(grad)  # autograd keeps the layout
            optimizer.step()

    weight, optimizer = fresh()
    steps(weight, optimizer, grads)
    killed, killed_optimizer = fresh()
    steps(killed, killed_optimizer, grads[:3])
    url = str(tmp_path / "state")
    save_train_state(url, TrainState({"w": killed.detach()}, killed_optimizer.state_dict(), {}, {}))
    saved = load_train_state(url)
    resumed, resumed_optimizer = fresh()
    with torch.no_grad():
        resumed.copy_(saved.model["w"])
    resumed_optimizer.load_state_dict(saved.optimizer)
    restore_layouts(resumed_optimizer)
    assert resumed_optimizer.state[resumed]["exp_avg"].stride() == resumed.stride()
    steps(resumed, resumed_optimizer, grads[3:])
    assert torch.equal(resumed, weight)
