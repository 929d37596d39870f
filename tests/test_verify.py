"""Nothing silent, nothing bricked: an interrupted store creation is rebuilt, a lost chunk is
an error (never NaN), and verify finds missing, truncated and flipped chunks in both stores
and repairs exactly those."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import test_store
import xarray as xr
from test_store import CHUNK, fill, identity_for, random_acts

from layerdrift.storage import activations as store_module
from layerdrift.storage.activations import (
    StoreWriter,
    create_store,
    missing_chunks,
    open_store,
    read_attrs,
    read_chunk,
)
from layerdrift.storage.results import write_result
from layerdrift.storage.schema import ChunkMissingError
from layerdrift.storage.verify import (
    check_activations,
    check_results,
    repair_activations,
    repair_results,
)

layout = test_store.layout  # the store tests' fixture: the token layout of four texts


@pytest.fixture(params=["local", "memory"])
def store_url(request, tmp_path) -> str:
    """A fresh store location on a local disk and on an fsspec filesystem."""
    name = f"store-{uuid.uuid4().hex[:8]}.zarr"
    return str(tmp_path / name) if request.param == "local" else f"memory://verify/{name}"


class _Interrupted(Exception):
    pass


def _chunk_file(url: str, checkpoint: int, layer: int, chunk: int) -> Path:
    return Path(url, "activations", "c", str(checkpoint), str(layer), str(chunk), "0")


def test_creation_cut_short_before_identity_is_rebuilt(store_url, layout, rng, monkeypatch):
    def cut_short(url: str) -> None:
        raise _Interrupted("killed between the arrays and the identity attributes")

    monkeypatch.setattr(store_module.zarr, "consolidate_metadata", cut_short)
    with pytest.raises(_Interrupted):
        create_store(store_url, layout, identity_for(layout))
    monkeypatch.undo()
    attrs = read_attrs(store_url)
    assert attrs is not None and "schema_version" not in attrs  # the group exists, half made

    generation = create_store(store_url, layout, identity_for(layout))
    assert read_attrs(store_url)["generation"] == generation
    acts = random_acts(layout, rng)
    fill(store_url, acts)
    got = open_store(store_url).activations.values
    np.testing.assert_array_equal(got, acts)


def test_a_clear_cut_short_leaves_no_old_identity(tmp_path, layout):
    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    store_module._clear(url, keep="writer.lock")
    assert read_attrs(url) is None


def test_missing_chunk_raises_naming_it_never_nan(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    fill(url, random_acts(layout, rng))
    _chunk_file(url, 1, 2, 1).unlink()
    assert xr.open_zarr(url).activations.isnull().any()  # plain xarray reads NaN ...
    expected = r"activations/c/1/2/1/0 .*checkpoint='final', layer=2, token chunk 1: tokens 8\.\."
    with pytest.raises(ChunkMissingError, match=expected):  # ... open_store does not
        open_store(url).activations.sel(checkpoint="final", layer=2).load()
    with pytest.raises(ChunkMissingError, match="is marked written but its file is missing"):
        read_chunk(url, "final", 2, 1)
    assert not np.isnan(open_store(url).activations.sel(checkpoint="base").values).any()


def test_unwritten_chunks_still_read_as_nan_when_partial_is_allowed(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    fill(url, random_acts(layout, rng), chunks=[0])
    partial = open_store(url, allow_partial=True).activations.sel(checkpoint="base", layer=0)
    values = partial.values
    assert not np.isnan(values[:CHUNK]).any() and np.isnan(values[CHUNK:]).all()


def _damage(url: str) -> dict[str, tuple[int, int, int]]:
    """Remove one chunk, truncate one and flip a byte in a third; return where."""
    where = {"missing": (1, 2, 1), "truncated": (0, 1, 0), "flipped": (1, 3, 2)}
    _chunk_file(url, *where["missing"]).unlink()
    truncated = _chunk_file(url, *where["truncated"])
    truncated.write_bytes(truncated.read_bytes()[:-10])
    flipped = _chunk_file(url, *where["flipped"])
    raw = bytearray(flipped.read_bytes())
    raw[5] ^= 0x10
    flipped.write_bytes(bytes(raw))
    return where


def test_verify_finds_each_damaged_chunk_and_repair_clears_only_those(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    acts = random_acts(layout, rng)
    fill(url, acts)
    assert check_activations(url) == []
    where = _damage(url)

    found = {d.chunk[:3]: d for d in check_activations(url)}
    assert set(found) == set(where.values())
    assert found[where["missing"]].problem == "missing"
    assert "bytes, expected" in found[where["truncated"]].problem
    assert "unreadable" in found[where["flipped"]].problem
    assert "checkpoint='final', layer=3, token chunk 2" in str(found[where["flipped"]])
    cheap = {d.chunk[:3] for d in check_activations(url, full=False)}
    assert cheap == {where["missing"], where["truncated"]}  # the flip needs the checksum

    untouched = _chunk_file(url, 0, 0, 1).stat().st_mtime_ns
    cleared = repair_activations(url, list(found.values()))
    assert cleared == [("base", 0), ("final", 1), ("final", 2)]
    assert missing_chunks(url, "base") == [0] and missing_chunks(url, "final") == [1, 2]
    assert check_activations(url) == []
    # Rewriting exactly the cleared chunks restores the store; nothing else was touched.
    writer = StoreWriter(url)
    for label, chunk in cleared:
        c = ["base", "final"].index(label)
        writer.write(label, chunk, acts[c, :, chunk * CHUNK : (chunk + 1) * CHUNK])
    np.testing.assert_array_equal(open_store(url).activations.values, acts)
    assert _chunk_file(url, 0, 0, 1).stat().st_mtime_ns == untouched


def test_damaged_coordinates_remove_the_store_for_a_rebuild(tmp_path, layout, rng):
    url = str(tmp_path / "a.zarr")
    create_store(url, layout, identity_for(layout))
    fill(url, random_acts(layout, rng))
    Path(url, "token_id", "c", "0").unlink()
    damage = check_activations(url, full=False)
    assert [(d.array, d.problem) for d in damage] == [("token_id", "missing")]
    repair_activations(url, damage)
    assert read_attrs(url) is None


def test_results_store_checksums_every_chunk(tmp_path):
    url = str(tmp_path / "results.zarr")
    values = np.arange(12, dtype=np.float64).reshape(3, 4)
    write_result(url, "scratch", xr.DataArray(values, dims=("layer", "metric")))  # undeclared
    write_result(url, "empty", xr.DataArray(np.full(3, np.nan), dims=("layer",)))
    assert check_results(url) == []
    assert Path(url, "empty", "empty", "c", "0").is_file()  # stored though all fill value
    chunk = Path(url, "scratch", "scratch", "c", "0", "0")
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.write_bytes(bytes(raw))
    Path(url, "empty", "empty", "c", "0").unlink()
    found = {(d.array, d.problem.split(" ")[0]) for d in check_results(url)}
    assert found == {("scratch/scratch", "unreadable"), ("empty/empty", "missing")}
    repair_results(url)
    assert check_results(url) == [] and not Path(url).exists()
