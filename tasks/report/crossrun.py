"""Final-vs-final similarity per layer between two runs, exact and streaming.

Two runs are comparable when they start from the same base model and recorded the same
probe texts (token for token): then their final checkpoints are two representations of the
same tokens, and every similarity metric follows from the per-layer moments of one Dask
pass over both stores (:func:`tasks.similarity.accumulate.iter_moments`), never holding a
layer of tokens in memory.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from layerdrift.config import load_run_config
from layerdrift.storage.rundir import CONFIG_FILE, RunDir
from layerdrift.tasks.similarity.accumulate import iter_moments
from layerdrift.tasks.similarity.metrics import METRICS
from layerdrift.tasks.similarity.tables import pair_metrics

FINAL = "final"
# Why two runs' stores cannot be compared token for token, and what makes them comparable.
PROBE_HINT = (
    "give both runs the same [probe] section (probe.dataset, probe.size, probe.seed) so that "
    "they record the same probe texts"
)


def final_label(ds: xr.Dataset) -> str:
    """The store's final checkpoint: ``final``, else its last checkpoint (given checkpoints)."""
    labels = [str(c) for c in ds["checkpoint"].values]
    return FINAL if FINAL in labels else labels[-1]


def base_model(run: RunDir) -> str:
    """The run's reference model: ``checkpoints.base`` when given, else ``model``."""
    config = load_run_config(run.read_text(CONFIG_FILE))
    return config.checkpoints.get("base", config.model)


def incomparable(a: RunDir, b: RunDir) -> str | None:
    """Why the final checkpoints of ``a`` and ``b`` cannot be compared (None: they can)."""
    model_a, model_b = base_model(a), base_model(b)
    if model_a != model_b:
        return f"the runs start from different base models ({model_a} vs {model_b})"
    missing = [r.url for r in (a, b) if not r.exists("activations.zarr")]
    if missing:
        return f"{', '.join(missing)} has no activation store yet: run it first"
    sa, sb = xr.open_zarr(a.activations()), xr.open_zarr(b.activations())
    if sa.sizes["layer"] != sb.sizes["layer"] or sa.sizes["hidden"] != sb.sizes["hidden"]:
        return "the stores differ in layers or hidden size"
    same_texts = sa.sizes["example"] == sb.sizes["example"] and np.array_equal(
        sa["text"].values, sb["text"].values
    )
    if not same_texts:
        return f"the probe texts differ: {PROBE_HINT}"
    if not np.array_equal(sa["token_id"].values, sb["token_id"].values):
        return "the probe texts are tokenized differently (data.max_length or the tokenizer)"
    return None


def cross_run_similarity(sa: xr.Dataset, sb: xr.Dataset) -> pd.DataFrame:
    """Every similarity metric of final (``sa``) vs final (``sb``) per layer: frame
    (layer, metric) from one streaming moments pass over both stores' final checkpoints.

    Each store's final checkpoint is [layer, token, hidden]; the two are stacked as two
    checkpoints of one lazy array (rechunked to the first store's token chunks).
    """
    x = sa["activations"].data[list(sa["checkpoint"].values).index(final_label(sa))]
    y = sb["activations"].data[list(sb["checkpoint"].values).index(final_label(sb))]
    acts = da.stack([x, y.rechunk(x.chunks)])  # [2, layer, token, hidden]
    layers = range(acts.shape[1])
    pairs = [((0, layer), (1, layer)) for layer in layers]
    mask = np.ones(acts.shape[2], dtype=bool)
    values: dict = {}
    for selves, crosses in iter_moments(acts, pairs, mask):
        values.update(pair_metrics(selves, crosses))
    rows = np.stack([values[pair] for pair in pairs])  # [layer, metric]
    frame = pd.DataFrame(rows, index=pd.Index(list(layers), name="layer"), columns=list(METRICS))
    return frame
