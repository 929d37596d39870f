"""The activation store: schema, region writes, manifest, lock, checksums, fsspec backends.

Every backend (local folder, ``memory://``, an S3 server on 127.0.0.1 when moto is
installed) passes the same round-trip and lock tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr
from factories import make_tokenizer

from layerdrift.storage.activations import (
    StoreWriter,
    create_store,
    missing_chunks,
    open_store,
    read_attrs,
    read_chunk,
    writer_lock,
)
from layerdrift.storage.lock import StoreLockedError, WriterLock
from layerdrift.storage.schema import (
    ChunkReadError,
    StoreIdentity,
    StoreIncompleteError,
    StoreMismatchError,
    StoreSchemaError,
    chunk_bounds,
    n_chunks,
)
from layerdrift.tasks.extract import tokenize_probe

TEXTS = ["good movie", "the plot was awful and boring really", "superb", "a very lovely film"]
CHUNK = 8
N_LAYERS, HIDDEN = 4, 6  # layers 0..3, so `sel(layer=3)` exists


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The token layout of four short texts under the tiny WordPiece tokenizer."""
    tokenizer = make_tokenizer(tmp_path_factory.mktemp("tok"))
    return tokenize_probe(TEXTS, [1, 0, 1, 1], tokenizer, max_length=16)


def identity_for(layout, **changes) -> StoreIdentity:
    """A store identity for ``layout`` with two checkpoints, base and final."""
    values = {
        "config_hash": "cfg0",
        "dataset": {"name": "t", "sha256": "d0"},
        "tokenizer": "tok0",
        "checkpoints": ("base", "final"),
        "models": {"base": {"weights_sha256": "w0"}, "final": {"weights_sha256": "w1"}},
        "n_layers": N_LAYERS,
        "hidden": HIDDEN,
        "n_tokens": layout.n_tokens,
        "token_chunk": CHUNK,
    }
    return StoreIdentity(**{**values, **changes})


def fill(url: str, data: np.ndarray, checkpoints=("base", "final"), chunks=None) -> None:
    """Write ``data`` (checkpoint, layer, token, hidden) chunk by chunk."""
    writer = StoreWriter(url)
    for c, label in enumerate(checkpoints):
        for chunk in chunks if chunks is not None else range(n_chunks(data.shape[2], CHUNK)):
            start, stop = chunk_bounds(chunk, data.shape[2], CHUNK)
            writer.write(label, chunk, data[c, :, start:stop])


def random_acts(layout, rng) -> np.ndarray:
    """Random float16 activations of shape (2, N_LAYERS, tokens, HIDDEN)."""
    return rng.standard_normal((2, N_LAYERS, layout.n_tokens, HIDDEN)).astype(np.float16)


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 (random port) with one bucket; skipped without moto."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    fsspec.config.set_conf_env(fsspec.config.conf)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("layerdrift-test")
    yield "s3://layerdrift-test"
    server.stop()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    fsspec.config.conf.pop("s3", None)


@pytest.fixture(params=["local", "memory", "s3"])
def store_url(request, tmp_path) -> str:
    """A fresh store location on each backend."""
    name = f"store-{uuid.uuid4().hex[:8]}.zarr"
    if request.param == "local":
        return str(tmp_path / name)
    if request.param == "memory":
        return f"memory://layerdrift/{name}"
    return f"{request.getfixturevalue('s3_server')}/{name}"


def test_round_trip_on_every_backend(store_url, layout, rng):
    acts = random_acts(layout, rng)
    generation = create_store(store_url, layout, identity_for(layout))
    assert missing_chunks(store_url, "final") == list(range(n_chunks(layout.n_tokens, CHUNK)))
    fill(store_url, acts)
    assert missing_chunks(store_url, "final") == []
    ds = open_store(store_url)
    np.testing.assert_array_equal(ds.activations.values, acts)
    assert ds.attrs["generation"] == generation and ds.attrs["schema_version"] == 1
    plain = xr.open_zarr(store_url)  # no layerdrift code
    np.testing.assert_array_equal(plain.activations.sel(checkpoint="final", layer=3), acts[1, 3])
    assert list(plain.token_text.values) == list(layout.token_text)
    assert list(plain.token_piece.values) == list(layout.token_piece)


def test_plain_xarray_selections_from_readme(tmp_path, layout, rng):
    url = str(tmp_path / "activations.zarr")
    acts = random_acts(layout, rng)
    create_store(url, layout, identity_for(layout))
    fill(url, acts)
    ds = xr.open_zarr(url)
    final_l3 = ds.activations.sel(checkpoint="final", layer=3)  # (token, hidden)
    assert final_l3.dims == ("token", "hidden") and final_l3.shape == (layout.n_tokens, HIDDEN)
    one = ds.activations.isel(token=(ds.example_of_token == 1).values)  # example 1's tokens
    start, count = int(ds.token_start[1]), int(ds.token_count[1])
    np.testing.assert_array_equal(one.values, acts[:, :, start : start + count])
    indexed = ds.set_xindex("example_of_token").sel(example_of_token=1)
    assert list(indexed.token_text.values) == list(layout.token_text[start : start + count])
    assert indexed.token_text.values[0] == "[CLS]" and bool(indexed.is_special[0])


def test_layout_agrees_with_tokenizer(layout, tmp_path):
    tokenizer = make_tokenizer(tmp_path / "tok")
    for i, text in enumerate(TEXTS):
        ids = tokenizer(text)["input_ids"]
        tokens = slice(layout.token_start[i], layout.token_start[i] + layout.token_count[i])
        assert layout.token_id[tokens].tolist() == ids
        assert layout.token_piece[tokens].tolist() == tokenizer.convert_ids_to_tokens(ids)
        # Every word here is whole in the vocabulary: its readable text is its piece.
        assert layout.token_text[tokens].tolist() == tokenizer.convert_ids_to_tokens(ids)
        assert layout.position[tokens].tolist() == list(range(len(ids)))
        assert (layout.example_of_token[tokens] == i).all()
        special = [t in tokenizer.all_special_ids for t in ids]
        assert layout.is_special[tokens].tolist() == special
    assert tokenizer.pad_token_id not in layout.token_id


def test_incomplete_store_refused_unless_partial(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    acts = random_acts(layout, rng)
    create_store(url, layout, identity_for(layout))
    fill(url, acts, checkpoints=("base",), chunks=[0])
    with pytest.raises(StoreIncompleteError, match="allow_partial=True") as info:
        open_store(url)
    assert "'final'" in str(info.value)
    partial = open_store(url, allow_partial=True).activations
    np.testing.assert_array_equal(partial[0, :, :CHUNK].values, acts[0, :, :CHUNK])
    assert np.isnan(partial[1].values).all() and np.isnan(partial[0, :, CHUNK:].values).all()


def test_create_resumes_same_identity_and_refuses_another(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    generation = create_store(url, layout, identity_for(layout))
    fill(url, random_acts(layout, rng), chunks=[0])
    assert create_store(url, layout, identity_for(layout)) == generation
    assert 0 not in missing_chunks(url, "base")  # resume keeps written chunks
    with pytest.raises(StoreMismatchError, match="config_hash.*overwrite=True"):
        create_store(url, layout, identity_for(layout, config_hash="cfg1"))
    with pytest.raises(StoreMismatchError, match="models"):
        create_store(url, layout, identity_for(layout, models={}))
    with pytest.raises(StoreMismatchError, match="checkpoints"):
        create_store(url, layout, identity_for(layout, checkpoints=("base", "mid", "final")))
    fresh = create_store(url, layout, identity_for(layout, config_hash="cfg1"), overwrite=True)
    assert fresh != generation and 0 in missing_chunks(url, "base")


def test_resume_removes_temporary_files_of_killed_writes(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    fill(url, random_acts(layout, rng), chunks=[0])
    chunk = next(p for p in (tmp_path / "a.zarr" / "activations" / "c").rglob("*") if p.is_file())
    leftover = chunk.with_suffix(f".{uuid.uuid4().hex}.partial")  # what a kill mid-write leaves
    leftover.write_bytes(b"half a chunk")
    # A live writer of one checkpoint may be about to rename its temporary file: keep them.
    with writer_lock(url, checkpoint="final"):
        create_store(url, layout, identity_for(layout))
        assert leftover.exists()
    create_store(url, layout, identity_for(layout))
    assert not leftover.exists() and chunk.exists()
    assert 0 not in missing_chunks(url, "base")


def test_rebuilt_checkpoint_is_invalidated_not_refused(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    generation = create_store(url, layout, identity_for(layout))
    fill(url, random_acts(layout, rng))
    rebuilt = {"base": {"weights_sha256": "w0"}, "final": {"weights_sha256": "w2"}}
    fresh = create_store(url, layout, identity_for(layout, models=rebuilt))
    assert fresh != generation and read_attrs(url)["generation"] == fresh
    assert missing_chunks(url, "base") == []
    assert missing_chunks(url, "final") == list(range(n_chunks(layout.n_tokens, CHUNK)))
    assert read_attrs(url)["models"]["final"] == {"weights_sha256": "w2"}
    assert create_store(url, layout, identity_for(layout, models=rebuilt)) == fresh


def test_schema_version_is_checked(tmp_path, layout):
    import zarr

    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    zarr.open_group(url, mode="r+").attrs["schema_version"] = 2
    with pytest.raises(StoreSchemaError, match="schema version 2"):
        open_store(url, allow_partial=True)
    with pytest.raises(StoreMismatchError, match="schema version 2"):
        create_store(url, layout, identity_for(layout))
    with pytest.raises(StoreSchemaError, match="no activation store"):
        open_store(str(tmp_path / "nothing.zarr"))


def test_region_write_is_idempotent(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    acts = random_acts(layout, rng)
    create_store(url, layout, identity_for(layout))
    fill(url, acts, chunks=[1])
    chunk_file = Path(url, "activations", "c", "1", "2", "1", "0")
    before = chunk_file.read_bytes()
    fill(url, acts, chunks=[1])
    assert chunk_file.read_bytes() == before
    with pytest.raises(ValueError, match="needs shape"):
        StoreWriter(url).write("base", 0, acts[0, :, :3])


def test_flipped_byte_names_the_chunk(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    fill(url, random_acts(layout, rng))
    chunk_file = Path(url, "activations", "c", "1", "2", "0", "0")
    raw = bytearray(chunk_file.read_bytes())
    raw[7] ^= 0x01
    chunk_file.write_bytes(bytes(raw))
    expected = r"activations/c/1/2/0/0.*checkpoint='final', layer=2, token chunk 0"
    with pytest.raises(ChunkReadError, match=expected):
        open_store(url).activations.sel(checkpoint="final", layer=2).load()
    with pytest.raises(ChunkReadError, match=expected):
        read_chunk(url, "final", 2, 0)
    assert read_chunk(url, "final", 1, 0).shape == (CHUNK, HIDDEN)  # its neighbours still read


def test_second_writer_fails_with_holder_named(store_url):
    with writer_lock(store_url):
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()} on host"):
            writer_lock(store_url).acquire()
    with writer_lock(store_url):  # released: free again
        pass


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _plant_lease(lock: WriterLock, **lease) -> None:
    import json

    lock.fs.makedirs(lock.path.rsplit("/", 1)[0], exist_ok=True)
    base = {"pid": os.getpid(), "host": socket.gethostname(), "renewed": time.time()}
    with lock.fs.open(lock.path, "wb") as handle:
        handle.write(json.dumps({**base, "token": "old", "time": "then", **lease}).encode())


def test_stale_lock_is_taken_over(store_url):
    lock_url = f"{store_url}/writer.lock"
    _plant_lease(WriterLock(lock_url), pid=_dead_pid())  # killed process, same host
    with WriterLock(lock_url) as lock:
        lock.check()
    _plant_lease(WriterLock(lock_url), host="elsewhere", renewed=time.time() - 3600)  # expired
    with WriterLock(lock_url, timeout_s=60) as lock:
        lock.check()
    _plant_lease(WriterLock(lock_url), host="elsewhere")  # fresh lease of another machine
    with pytest.raises(StoreLockedError, match="host elsewhere"):
        WriterLock(lock_url, timeout_s=60).acquire()


def test_heartbeat_keeps_a_long_write_alive(tmp_path):
    lock_url = str(tmp_path / "writer.lock")
    with WriterLock(lock_url, timeout_s=0.4) as lock:
        time.sleep(1.0)  # several timeouts, renewed by the heartbeat
        with pytest.raises(StoreLockedError):
            WriterLock(lock_url, timeout_s=0.4).acquire()
        lock.check()
    assert not Path(lock_url).exists()


def test_store_attrs_record_identity(tmp_path, layout):
    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    attrs = read_attrs(url)
    assert attrs["models"]["final"] == {"weights_sha256": "w1"}
    assert attrs["dataset"]["sha256"] == "d0" and attrs["token_chunk"] == CHUNK
    assert len(attrs["generation"]) == 32
