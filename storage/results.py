"""results.zarr: every stage's metrics as labelled arrays, one Zarr group per variable.

Each variable (``similarity``, ``drift``, ``sae_metrics`` …) lives in its own group, because
variables disagree on coordinates (``metric`` means different things in ``similarity`` and
``sae_metrics``; ``layer_similarity`` covers only base and final). Read one with plain xarray:
``xr.open_zarr("<run>/results.zarr", group="similarity")``, or all with
``xr.open_datatree("<run>/results.zarr", engine="zarr")``. What each group holds is declared
in :mod:`storage.results_schema`; a declared group is checked against it before it is written.
"""

from __future__ import annotations

import logging

import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from layerdrift.storage.results_schema import result_group

logger = logging.getLogger(__name__)


def write_result(url: str, name: str, data: xr.DataArray | xr.Dataset, **to_zarr_kwargs) -> None:
    """Write (or replace) the group ``name`` of the results store at ``url``.

    A DataArray is stored under its group's name. Rewriting a group replaces it whole, so a
    retried stage leaves no mixture of old and new values. A group declared in
    :data:`storage.results_schema.RESULT_GROUPS` must match its entry, else
    :class:`~storage.results_schema.ResultSchemaError` is raised and nothing is written.
    """
    declared = result_group(name)
    if declared is not None:
        declared.validate(data if isinstance(data, xr.Dataset) else data.rename(name))
    dataset = data.to_dataset(name=name) if isinstance(data, xr.DataArray) else data
    dataset = _variable_length_strings(dataset)
    # Every chunk carries a CRC32C and is stored even when it equals the fill value, so that
    # `layerdrift verify` can tell a damaged or lost chunk file from one never written.
    encoding = {key: {"compressors": (ZstdCodec(), Crc32cCodec())} for key in dataset.variables}
    encoding.update(to_zarr_kwargs.pop("encoding", {}))
    dataset.to_zarr(
        url,
        group=name,
        mode="w",
        consolidated=False,
        zarr_format=3,
        encoding=encoding,
        write_empty_chunks=True,
        **to_zarr_kwargs,
    )
    zarr.consolidate_metadata(url)
    logger.info("wrote %s to %s", name, url)


def _variable_length_strings(dataset: xr.Dataset) -> xr.Dataset:
    """Store fixed-width numpy strings as variable-length ones (in the Zarr v3 spec)."""
    fixed = [name for name, var in dataset.variables.items() if var.dtype.kind == "U"]
    if not fixed:
        return dataset
    converted = {name: dataset[name].astype(object) for name in fixed}
    return dataset.assign_coords(
        {k: v for k, v in converted.items() if k in dataset.coords}
    ).assign({k: v for k, v in converted.items() if k not in dataset.coords})


def open_result(url: str, name: str) -> xr.Dataset:
    """Open one group of the results store as an xarray Dataset."""
    return xr.open_zarr(url, group=name, consolidated=False)


def list_results(url: str) -> list[str]:
    """The names of the groups present in the results store (empty when it does not exist)."""
    try:
        root = zarr.open_group(url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return []
    return sorted(name for name, _ in root.groups())
