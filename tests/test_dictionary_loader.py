"""The streaming loader: split by example, no held-out token in training, seeded resume."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from factories import make_activation_store

from layerdrift.tasks.dictionary.loader import ActivationLoader, split_heldout


def _store(tmp_path, rng, dtype=np.float32, n_examples=60):
    """A store whose hidden[0] is the token index and hidden[1] encodes (checkpoint, layer)."""
    counts = [int(c) for c in rng.integers(3, 12, n_examples)]
    n_token = sum(counts)
    acts = np.zeros((2, 3, n_token, 4), dtype=dtype)
    acts[..., 0] = np.arange(n_token)
    for c in range(2):
        for layer in range(3):
            acts[c, layer, :, 1] = 10 * c + layer
    url = make_activation_store(str(tmp_path / "a.zarr"), acts, counts, token_chunk=16)
    return xr.open_zarr(url, chunks=None)


def _token_ids(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0, 0].astype(np.int64)


def test_split_is_by_example_and_seeded():
    mask = split_heldout(100, 0.2, seed=3)
    assert mask.sum() == 20
    np.testing.assert_array_equal(mask, split_heldout(100, 0.2, seed=3))
    assert not np.array_equal(mask, split_heldout(100, 0.2, seed=4))


def test_never_yields_heldout_tokens_and_covers_training_once_per_epoch(tmp_path, rng):
    ds = _store(tmp_path, rng)
    loader = ActivationLoader(ds, [("base", 1)], batch_size=32, heldout_fraction=0.25, seed=0)
    held_examples = np.flatnonzero(loader.heldout_examples)
    held_tokens = set(np.flatnonzero(np.isin(ds.example_of_token.values, held_examples)))
    assert held_tokens and not held_tokens & set(np.flatnonzero(loader.train_mask))
    stream = loader.batches()
    n_train = loader.n_train_tokens
    seen = np.concatenate([_token_ids(next(stream)) for _ in range(3 * n_train // 32)])
    assert not set(seen.tolist()) & held_tokens
    first_epoch = seen[: (n_train // 32) * 32]
    assert len(set(first_epoch.tolist())) == len(first_epoch)  # no repeats within an epoch
    expected = set(np.flatnonzero(loader.train_mask).tolist())
    assert set(seen[:n_train].tolist()) == expected
    assert not np.array_equal(seen[:64], np.sort(seen[:64]))  # shuffled


def test_heldout_tokens_are_exactly_the_heldout_examples(tmp_path, rng):
    ds = _store(tmp_path, rng, dtype=np.float16, n_examples=20)
    loader = ActivationLoader(ds, [("final", 2)], batch_size=8, heldout_fraction=0.3, seed=1)
    x, index = loader.heldout()
    assert x.dtype == np.float32 and x.shape == (len(index), 1, 4)
    expected = np.flatnonzero(loader.heldout_examples[ds.example_of_token.values])
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(_token_ids(x), expected)
    assert (x[:, 0, 1] == 12).all()


def test_exclude_special_tokens(tmp_path, rng):
    ds = _store(tmp_path, rng)
    loader = ActivationLoader(ds, [("base", 0)], batch_size=16, exclude_special=True)
    stream = loader.batches()
    seen = np.concatenate([_token_ids(next(stream)) for _ in range(20)])
    assert not ds.is_special.values[seen].any()


def test_resume_continues_the_same_stream(tmp_path, rng):
    ds = _store(tmp_path, rng)
    loader = ActivationLoader(ds, [("base", 0)], batch_size=24, buffer_chunks=3, seed=5)
    full = loader.batches()
    reference = [next(full) for _ in range(40)]  # more than one epoch
    resumed = loader.batches(start_step=17)
    for step in range(17, 40):
        np.testing.assert_array_equal(next(resumed), reference[step])


def test_several_sources_are_the_same_tokens(tmp_path, rng):
    ds = _store(tmp_path, rng)
    sources = [("base", 0), ("final", 1), ("final", 2)]
    batch = next(ActivationLoader(ds, sources, batch_size=50).batches())
    assert batch.shape == (50, 3, 4)
    np.testing.assert_array_equal(batch[:, 0, 0], batch[:, 2, 0])
    np.testing.assert_array_equal(batch[0, :, 1], [0, 11, 12])


def test_bad_sources_and_batch_name_the_fix(tmp_path, rng):
    ds = _store(tmp_path, rng, n_examples=10)
    with pytest.raises(KeyError, match="not in the activation store"):
        ActivationLoader(ds, [("step-000001", 0)], batch_size=4)
    with pytest.raises(KeyError, match="layer 7"):
        ActivationLoader(ds, [("base", 7)], batch_size=4)
    with pytest.raises(ValueError, match="lower the training batch_size"):
        ActivationLoader(ds, [("base", 0)], batch_size=10_000)


def test_order_seed_reorders_the_same_training_tokens(tmp_path, rng):
    ds = _store(tmp_path, rng)
    one = ActivationLoader(ds, [("base", 0)], batch_size=16, seed=2)
    other = ActivationLoader(ds, [("base", 0)], batch_size=16, seed=2, order_seed=3)
    np.testing.assert_array_equal(one.heldout_examples, other.heldout_examples)
    n = one.n_train_tokens // 16
    a, b = one.batches(), other.batches()
    first = np.concatenate([_token_ids(next(a)) for _ in range(n)])
    second = np.concatenate([_token_ids(next(b)) for _ in range(n)])
    # The same tokens of one epoch (each stream leaves a different remainder of < 16 out).
    train = set(np.flatnonzero(one.train_mask).tolist())
    assert set(first.tolist()) <= train and set(second.tolist()) <= train
    assert len(set(first.tolist()) & set(second.tolist())) > len(first) - 16
    assert not np.array_equal(first, second)  # in another order


def test_chunks_are_read_once_and_kept_within_the_budget(tmp_path, rng, monkeypatch):
    """A stream over three epochs reads each store chunk once, yields the batches of a
    loader that keeps nothing, and the kept chunks cannot be written to; over the budget
    the chunks are read again (and the stream is still the same)."""
    from layerdrift.tasks.dictionary import loader as module

    ds = _store(tmp_path, rng)
    reads = []
    variable = type(ds["activations"].variable)
    original = variable.__getitem__

    def counted(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(variable, "__getitem__", counted)

    def stream(keep_bytes: int) -> np.ndarray:
        monkeypatch.setattr(module, "KEEP_BYTES", keep_bytes)
        loader = ActivationLoader(ds, [("base", 1), ("final", 2)], batch_size=32, seed=0)
        batches = loader.batches()
        steps = 3 * loader.n_train_tokens // 32
        out = np.stack([next(batches) for _ in range(steps)])
        assert all(not kept.flags.writeable for kept in loader._kept.values())
        return out, len(loader.chunks)

    reads.clear()
    kept, n_chunks = stream(2**30)
    assert len(reads) == 2 * n_chunks  # two sources, each chunk read once
    reads.clear()
    again, _ = stream(0)
    assert len(reads) > 4 * n_chunks  # every epoch reads every chunk again
    np.testing.assert_array_equal(kept, again)
