"""The activation store: create once, fill with region writes, open as a plain xarray Dataset.

The schema is in :mod:`storage.schema`. :func:`create_store` writes every coordinate and all
metadata from a lazy template (no activation chunk is written); a :class:`StoreWriter` then
writes one token chunk of one checkpoint across all layers at a time and sets the chunk's
``written`` entry only after the data write returned (and, on a local disk, was fsynced).
Writes to the same region give the same bytes, so retries and resumes are idempotent. Works
on local paths and fsspec URLs.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from pathlib import Path

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import Crc32cCodec

from layerdrift.storage.chunks import ChunkReader
from layerdrift.storage.lock import WriterLock
from layerdrift.storage.schema import (
    ACTIVATIONS,
    LOCK_FILE,
    SCHEMA_VERSION,
    WRITTEN,
    StoreIdentity,
    StoreIncompleteError,
    StoreMismatchError,
    StoreSchemaError,
    TokenLayout,
    chunk_bounds,
    n_chunks,
)

logger = logging.getLogger(__name__)

ACTIVATION_DIMS = ("checkpoint", "layer", "token", "hidden")


def writer_lock(url: str, timeout_s: float = 600.0, checkpoint: str | None = None) -> WriterLock:
    """The writer lock of the store at ``url`` (a lease file inside the store).

    With ``checkpoint``: a lease on that checkpoint's chunks only, kept beside the store in
    ``<store>.locks/<checkpoint>.lock``. Writers of different checkpoints never share a chunk
    (nor a ``written`` chunk), so they may run at once, e.g. on the workers of a Dask cluster.
    """
    if checkpoint is not None:
        return WriterLock(f"{url.rstrip('/')}.locks/{checkpoint}.lock", timeout_s=timeout_s)
    return WriterLock(f"{url.rstrip('/')}/{LOCK_FILE}", timeout_s=timeout_s)


def read_attrs(url: str) -> dict | None:
    """The root attributes of the store at ``url``, or None when there is no Zarr group.

    A group without ``schema_version`` (``{}`` when its metadata cannot even be parsed) is a
    creation that was interrupted: :func:`create_store` builds it again.
    """
    try:
        return dict(zarr.open_group(url, mode="r").attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    except ValueError:  # a root zarr.json that does not parse
        return {}


def store_generation(url: str) -> str:
    """The generation id of the store at ``url`` ("" when there is no store).

    A new id is drawn whenever the store is rebuilt or a checkpoint's rows are invalidated;
    anything trained from the store records it, so later stages can tell stale from current.
    """
    return str((read_attrs(url) or {}).get("generation") or "")


def _template(layout: TokenLayout, identity: StoreIdentity) -> xr.Dataset:
    """A Dataset with lazy activations and manifest, and every coordinate in memory."""
    n_ckpt, n_chunk = len(identity.checkpoints), n_chunks(layout.n_tokens, identity.token_chunk)
    shape = (n_ckpt, identity.n_layers, layout.n_tokens, identity.hidden)
    chunks = (1, 1, identity.token_chunk, identity.hidden)
    return xr.Dataset(
        {
            ACTIVATIONS: (ACTIVATION_DIMS, da.zeros(shape, dtype=identity.dtype, chunks=chunks)),
            "text": ("example", layout.text),
            "label": ("example", layout.label),
            "token_start": ("example", layout.token_start),
            "token_count": ("example", layout.token_count),
            WRITTEN: (("checkpoint", "token_chunk"), da.zeros((n_ckpt, n_chunk), dtype=bool)),
        },
        coords={
            "checkpoint": np.array(identity.checkpoints, dtype=object),
            "layer": np.arange(identity.n_layers, dtype=np.int32),
            "token_id": ("token", layout.token_id),
            "token_text": ("token", layout.token_text),
            "position": ("token", layout.position),
            "is_special": ("token", layout.is_special),
            "example_of_token": ("token", layout.example_of_token),
            **_optional_coords(layout),
        },
    )


def _optional_coords(layout: TokenLayout) -> dict:
    """Token coordinates only some layouts carry (``token_piece``, added in schema 1)."""
    return {} if layout.token_piece is None else {"token_piece": ("token", layout.token_piece)}


def remove_interrupted_writes(url: str) -> int:
    """Delete the temporary ``*.partial`` files that killed writers left in a local store.

    Zarr's local store writes each chunk to ``<key>.<uuid>.partial`` and renames it, so a
    writer killed mid-write leaves that file behind; it is never read, only disk wasted.
    Removed only while no checkpoint writer holds a live lease (a live writer's temporary file
    is about to be renamed). Returns how many files were removed.
    """
    fs, root = fsspec.core.url_to_fs(url)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(root):
        return 0
    leases = [WriterLock(str(path)) for path in Path(f"{root.rstrip('/')}.locks").glob("*.lock")]
    live = [
        lock.url
        for lock in leases
        if (held := lock.holder()) is not None and not lock.is_stale(held)
    ]
    if live:
        logger.info("not removing temporary files from %s: writers hold %s", url, live)
        return 0
    leftovers = list(Path(root).rglob("*.partial"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers:
        logger.info("removed %d temporary files of interrupted writes from %s", len(leftovers), url)
    return len(leftovers)


def _clear(url: str, keep: str) -> None:
    """Delete everything in the store folder except the file ``keep``.

    The root ``zarr.json`` goes first: a clear cut short leaves no identity behind, so the
    next run sees an interrupted creation, never an old store with missing arrays.
    """
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return
    entries = fs.ls(root, detail=False)
    names = {entry.rstrip("/").rsplit("/", 1)[-1]: entry for entry in entries}
    if "zarr.json" in names:
        fs.rm(names.pop("zarr.json"))
    for name, entry in names.items():
        if name != keep:
            fs.rm(entry, recursive=True)


def create_store(
    url: str, layout: TokenLayout, identity: StoreIdentity, overwrite: bool = False
) -> str:
    """Create the store at ``url`` (metadata and coordinates only) and return its generation id.

    An existing store with the same identity is kept as it is (resume) and its generation id
    returned. When only the weights of some checkpoints changed (a rebuilt checkpoint), their
    ``written`` rows are cleared so that extraction redoes them, and a new generation id is
    returned. A store of another schema or identity raises :class:`StoreMismatchError` unless
    ``overwrite`` is true, which deletes it first.
    """
    if layout.n_tokens != identity.n_tokens:
        raise ValueError(f"layout has {layout.n_tokens} tokens, identity {identity.n_tokens}")
    with writer_lock(url):
        attrs = read_attrs(url)
        if attrs is not None and "schema_version" not in attrs:
            logger.warning("%s was left half-created by an interrupted run: creating it again", url)
            attrs = None
        if attrs is not None and not overwrite:
            if attrs.get("schema_version") != SCHEMA_VERSION:
                raise StoreMismatchError(
                    f"{url} holds a store of schema version {attrs.get('schema_version')}, "
                    f"not {SCHEMA_VERSION}: pass overwrite=True (or delete it) to rebuild it"
                )
            differing = identity.differences(attrs)
            if differing == ["models"] and set(attrs["models"]) == set(identity.models):
                return _invalidate_checkpoints(url, attrs, identity)
            if differing:
                raise StoreMismatchError(
                    f"{url} already holds an activation store made from something else "
                    f"(differs in {', '.join(differing)}): pass overwrite=True (or delete the "
                    "store) to rebuild it, or use another run"
                )
            logger.info("activation store %s exists with the same identity: resuming", url)
            remove_interrupted_writes(url)
            return str(attrs["generation"])
        if attrs is not None:
            logger.warning("overwriting activation store %s", url)
        _clear(url, keep=LOCK_FILE)
        generation = _write_template(url, layout, identity)
    logger.info(
        "created activation store %s: %d checkpoints x %d layers x %d tokens x %d hidden",
        url,
        len(identity.checkpoints),
        identity.n_layers,
        layout.n_tokens,
        identity.hidden,
    )
    return generation


def _write_template(url: str, layout: TokenLayout, identity: StoreIdentity) -> str:
    """Write every array's metadata and the coordinates, then the identity; return generation.

    The identity attributes are written last, after the consolidated metadata: a store
    without them is a creation cut short, and :func:`create_store` builds it again.
    """
    generation = uuid.uuid4().hex
    encoding = {
        ACTIVATIONS: {
            "chunks": (1, 1, identity.token_chunk, identity.hidden),
            "compressors": [Crc32cCodec()],
            "fill_value": np.nan,
        },
        WRITTEN: {"chunks": (1, 1), "fill_value": False},
    }
    template = _template(layout, identity)
    with warnings.catch_warnings():  # the lease file is not part of the Zarr hierarchy
        warnings.filterwarnings("ignore", message=f"Object at {LOCK_FILE} is not")
        # Every chunk of the coordinates is stored, fill values included, so that
        # `layerdrift verify` can tell a lost chunk file from one never written.
        template.to_zarr(
            url,
            mode="a",
            compute=False,
            encoding=encoding,
            zarr_format=3,
            consolidated=False,
            write_empty_chunks=True,
        )
        zarr.consolidate_metadata(url)
    # Updating the root attributes keeps the consolidated metadata written just before.
    zarr.open_group(url, mode="r+").attrs.update({**identity.to_attrs(), "generation": generation})
    return generation


def _invalidate_checkpoints(url: str, attrs: dict, identity: StoreIdentity) -> str:
    """Clear the manifest rows of checkpoints whose model changed; return a new generation."""
    changed = [label for label, ident in identity.models.items() if attrs["models"][label] != ident]
    written = zarr.open_array(url, path=WRITTEN, mode="r+")
    for label in changed:
        written[attrs["checkpoints"].index(label), :] = False
    generation = uuid.uuid4().hex
    group = zarr.open_group(url, mode="r+")
    group.attrs.update({"models": identity.to_attrs()["models"], "generation": generation})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f"Object at {LOCK_FILE} is not")
        zarr.consolidate_metadata(url)
    logger.warning(
        "checkpoints %s changed since %s was made: their chunks will be extracted again",
        changed,
        url,
    )
    return generation


def _checked_attrs(url: str) -> dict:
    attrs = read_attrs(url)
    if attrs is None:
        raise StoreSchemaError(f"no activation store at {url}: run the extract stage first")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreSchemaError(
            f"{url} has schema version {attrs.get('schema_version')!r}; this layerdrift reads "
            f"version {SCHEMA_VERSION}: re-run the extract stage to rebuild the store"
        )
    return attrs


def written_manifest(url: str) -> np.ndarray:
    """The ``written`` manifest, bool array of shape (checkpoint, token_chunk)."""
    return np.asarray(zarr.open_array(url, path=WRITTEN, mode="r")[...], dtype=bool)


def missing_chunks(url: str, checkpoint: str) -> list[int]:
    """Token chunks of ``checkpoint`` not written yet (all of them when there is no store)."""
    attrs = read_attrs(url)
    if attrs is None or attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreSchemaError(f"no activation store of schema {SCHEMA_VERSION} at {url}")
    if checkpoint not in attrs["checkpoints"]:
        raise KeyError(f"checkpoint {checkpoint!r} is not in {url} ({attrs['checkpoints']})")
    row = written_manifest(url)[attrs["checkpoints"].index(checkpoint)]
    return [int(i) for i in np.flatnonzero(~row)]


class StoreWriter:
    """Region writes into one store: ``write(checkpoint, chunk, data)``, then the manifest."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.attrs = _checked_attrs(url)
        self.activations = zarr.open_array(url, path=ACTIVATIONS, mode="r+")
        self.written = zarr.open_array(url, path=WRITTEN, mode="r+")
        self.token_chunk = int(self.attrs["token_chunk"])
        self.n_tokens = int(self.attrs["n_tokens"])
        fs, root = fsspec.core.url_to_fs(url)
        self._local_root = root if isinstance(fs, LocalFileSystem) else None

    def _sync(self, index: int, chunk: int) -> None:
        """fsync the chunk files of a local store (object stores are durable on return)."""
        if self._local_root is None:
            return
        for layer in range(self.activations.shape[1]):
            path = os.path.join(self._local_root, ACTIVATIONS, "c", str(index), str(layer))
            fd = os.open(os.path.join(path, str(chunk), "0"), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write(self, checkpoint: str, chunk: int, data: np.ndarray) -> None:
        """Write ``data`` (layer, tokens of the chunk, hidden) and mark the chunk written."""
        index = self.attrs["checkpoints"].index(checkpoint)
        start, stop = chunk_bounds(chunk, self.n_tokens, self.token_chunk)
        expected = (self.activations.shape[1], stop - start, self.activations.shape[3])
        if data.shape != expected:
            raise ValueError(
                f"chunk {chunk} of {checkpoint!r} needs shape {expected}, got {data.shape}"
            )
        try:
            self.activations[index, :, start:stop, :] = np.asarray(data, self.activations.dtype)
            self._sync(index, chunk)
        except Exception as error:
            raise OSError(
                f"failed to write chunk {chunk} (tokens {start}..{stop}) of checkpoint "
                f"{checkpoint!r} to {self.url}: {error}"
            ) from error
        self.written[index, chunk] = True


def read_chunk(url: str, checkpoint: str, layer: int, chunk: int) -> np.ndarray:
    """One stored chunk, shape (tokens of the chunk, hidden); errors name the chunk."""
    attrs = _checked_attrs(url)
    ckpt = attrs["checkpoints"].index(checkpoint)
    arr = zarr.open_array(url, path=ACTIVATIONS, mode="r")
    start, stop = chunk_bounds(chunk, int(attrs["n_tokens"]), int(attrs["token_chunk"]))
    reader = ChunkReader(url, arr, attrs, written_manifest(url))
    return reader[ckpt, layer, slice(start, stop), slice(None)]


def open_store(url: str, allow_partial: bool = False) -> xr.Dataset:
    """Open the store as an xarray Dataset after checking its schema and completeness.

    ``activations`` is a Dask array (checkpoint, layer, token, hidden) whose read errors
    name the failing chunk. Raises :class:`StoreIncompleteError` when chunks are missing,
    unless ``allow_partial`` (chunks not written yet then read as NaN). A chunk marked written
    whose file is gone raises :class:`ChunkMissingError` when read, never NaN.
    """
    attrs = _checked_attrs(url)
    manifest = written_manifest(url)
    if not allow_partial and not manifest.all():
        counts = (~manifest).sum(axis=1)
        labels = attrs["checkpoints"]
        missing = {label: int(n) for label, n in zip(labels, counts, strict=True) if n}
        raise StoreIncompleteError(
            f"{url} is incomplete: chunks still missing per checkpoint {missing} of "
            f"{manifest.shape[1]}: run the extract stage to finish it, or pass allow_partial=True"
        )
    ds = xr.open_zarr(url, consolidated=True)
    arr = zarr.open_array(url, path=ACTIVATIONS, mode="r")
    reader = ChunkReader(url, arr, attrs, manifest)
    data = da.from_array(
        reader,
        chunks=arr.chunks,
        name=f"activations-{tokenize(url, attrs['generation'])}",
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
        fancy=False,
    )
    return ds.assign({ACTIVATIONS: ds[ACTIVATIONS].copy(data=data)})
