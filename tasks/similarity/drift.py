"""Per-token drift: 1 − cos(base, checkpoint) for every token, layer and checkpoint, by Dask."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

TOKEN_COORDS = ("token_id", "token_text", "position", "is_special", "example_of_token")


def _drift_block(acts: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(c, l, t, h) and (l, t, h) blocks → float32 (c, l, t) of 1 − cos(base, acts)."""
    x = acts.astype(np.float64)
    b = base.astype(np.float64)[None]
    dot = np.einsum("clth,clth->clt", x, np.broadcast_to(b, x.shape), optimize=True)
    denom = np.linalg.norm(x, axis=-1) * np.linalg.norm(b, axis=-1)
    cos = np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)
    return (1.0 - cos).astype(np.float32)


def drift_array(ds: xr.Dataset, base: str = "base") -> xr.DataArray:
    """Lazy (Dask) drift (checkpoint, layer, token) float32 = 1 − cos(base_t, checkpoint_t).

    ``ds`` is the opened activation store; the result carries its checkpoint, layer and token
    coordinates, so it aligns with the store token by token. Zero-norm tokens get drift 1.
    """
    if base not in ds["checkpoint"].values:
        raise ValueError(f"the store has no {base!r} checkpoint to measure drift from")
    acts = ds["activations"].data.rechunk({0: 1, 1: 1, 3: -1})
    index = int(np.flatnonzero(ds["checkpoint"].values == base)[0])
    data = da.blockwise(
        _drift_block,
        "clt",
        acts,
        "clth",
        acts[index],
        "lth",
        dtype=np.float32,
        concatenate=True,
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )
    coords = {
        "checkpoint": ds["checkpoint"].values.astype(object),  # variable-length strings
        "layer": ds["layer"].values,
    }
    coords.update({name: ds[name].variable for name in TOKEN_COORDS if name in ds.coords})
    return xr.DataArray(
        data,
        dims=("checkpoint", "layer", "token"),
        coords=coords,
        name="drift",
        attrs={"definition": f"1 - cos({base}, checkpoint) per token", "reference": base},
    )
