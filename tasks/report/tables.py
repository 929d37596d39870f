"""Tables of a run for ``layerdrift show``: the per-layer table, the README's feature table
and any results group, as a terminal table, CSV, markdown or JSON.

Column names are the full names of :func:`tasks.report.summary.layer_frame` (the report's
table uses the same). ``features`` is the table the README shows for the bundled default,
with the README's headers; ``layerdrift show RUN --table features --format markdown``
prints it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import xarray as xr

from layerdrift.storage.results import list_results, open_result
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.report.load import load_inputs
from layerdrift.tasks.report.summary import COUNT_COLUMNS, layer_frame

FORMATS = ("table", "csv", "markdown", "json")
TABLES = ("layers", "features")
# Rows a terminal table shows of a results group; CSV, markdown and JSON show every row.
MAX_TERMINAL_ROWS = 200
# Wider last dims stay rows: a group like drift (token) would make thousands of columns.
MAX_PIVOT_COLUMNS = 32

# The README's feature table: header -> per-layer column (None: the crosscoder counts).
FEATURE_COLUMNS: dict[str, str | None] = {
    "layer": "layer",
    "cosine": "cosine",
    "linear CKA": "linear_cka",
    "SAE latents matched": "matched_fraction",
    "transfer FVU base SAE → final": "transfer_fvu_base_on_finetuned",
    "FVU final SAE on final": "transfer_fvu_finetuned_on_finetuned",
    "crosscoder base-only / shared / fine-tuned-only": None,
    "crosscoder lean": "relative_norm_deviation",
    "task-specific latents, final SAE": "task_specific_finetuned_sae",
    # The controls (a second base SAE of another seed), after the columns they control.
    "control: base SAEs matched": "matched_fraction_control",
    "FVU final SAE on base": "transfer_fvu_finetuned_on_base",
    "control: FVU 2nd base SAE on base": "transfer_fvu_control",
}


def per_layer_table(run: RunDir) -> pd.DataFrame:
    """The per-layer table of ``run``: a ``layer`` column then one column per statistic.

    Similarities compare the final checkpoint with base (``procrustes`` is a distance:
    0 = equal up to rotation); the feature columns are present when the features stage ran.
    Empty when the similarity stage has not run.
    """
    return layer_frame(load_inputs(run))


def feature_table(run: RunDir) -> pd.DataFrame:
    """The README's feature table of ``run`` (its columns that the run has, README headers)."""
    layers = per_layer_table(run)
    if layers.empty:
        return layers
    out = {}
    for header, column in FEATURE_COLUMNS.items():
        if column is None:
            if all(c in layers for c in COUNT_COLUMNS):
                counts = layers[list(COUNT_COLUMNS)].astype("Int64").astype(str)
                out[header] = counts.agg(" / ".join, axis=1)
        elif column in layers:
            out[header] = layers[column]
    return pd.DataFrame(out)


def group_table(run: RunDir, name: str) -> pd.DataFrame:
    """One results group as a frame: its last dim's labels as columns when few, else rows.

    Raises FileNotFoundError naming the groups present when ``name`` is not one of them.
    """
    present = list_results(run.results())
    if name not in present:
        listed = ", ".join(present) or "none (no stage has written results yet)"
        raise FileNotFoundError(f"{run.url} has no results group {name!r}; groups: {listed}")
    array = open_result(run.results(), name)[name].load()
    return array_frame(array)


def array_frame(array: xr.DataArray) -> pd.DataFrame:
    """``array`` as a flat frame: one column per dim (and coordinate) and the values."""
    name = str(array.name)
    if array.ndim == 0:
        return pd.DataFrame({name: [array.item()]})
    last = array.dims[-1]
    if array.ndim > 1 and last in array.coords and array.sizes[last] <= MAX_PIVOT_COLUMNS:
        frame = array.to_dataset(dim=last).to_dataframe()
        frame.columns = [str(c) for c in frame.columns]
        return frame.reset_index()
    return array.to_dataframe(name=name).reset_index()


def layer_table(run: RunDir, table: str) -> pd.DataFrame:
    """The named table of ``run``: ``layers`` (every per-layer column) or ``features``."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}: use one of {', '.join(TABLES)}")
    return per_layer_table(run) if table == "layers" else feature_table(run)


def cell_text(column: str, value) -> str:
    """A value as the terminal and markdown tables print it (floats to 3 decimals)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float | np.floating):
        if column in COUNT_COLUMNS or column == "layer":
            return str(int(value))
        return f"{value:.3f}"
    return str(value)


def text_rows(frame: pd.DataFrame) -> list[list[str]]:
    """Every row of ``frame`` as cell texts."""
    columns = [str(c) for c in frame.columns]
    return [
        [cell_text(c, v) for c, v in zip(columns, row, strict=True)]
        for row in frame.itertuples(index=False)
    ]


def markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub-flavoured markdown table, floats to 3 decimals."""
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cells) + " |" for cells in text_rows(frame)]
    return "\n".join([head, rule, *rows])


def json_records(frame: pd.DataFrame) -> list[dict]:
    """Rows of ``frame`` as JSON-safe dicts (NaN becomes None, numpy scalars plain Python)."""
    records = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            value = value.item() if hasattr(value, "item") else value
            is_nan = isinstance(value, float) and math.isnan(value)
            clean[str(key)] = None if is_nan else value
        records.append(clean)
    return records


def formatted(frame: pd.DataFrame, fmt: str) -> str:
    """``frame`` as CSV (full precision), markdown or JSON text."""
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    if fmt == "markdown":
        return markdown(frame)
    if fmt == "json":
        return json.dumps(json_records(frame), indent=1, ensure_ascii=False)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def column_blocks(frame: pd.DataFrame, width: int, keep: int = 1) -> list[pd.DataFrame]:
    """Split ``frame`` into blocks of columns that each fit ``width`` characters.

    Every block repeats the first ``keep`` columns (the row labels), so a wide table reads
    as several narrower ones stacked, each with full column names.
    """
    rows = text_rows(frame)
    widths = [
        max([len(str(c)), *(len(r[i]) for r in rows)]) + 3 for i, c in enumerate(frame.columns)
    ]
    fixed = sum(widths[:keep]) + 1
    blocks: list[list[int]] = [[]]
    used = fixed
    for i in range(keep, len(frame.columns)):
        if blocks[-1] and used + widths[i] > width:
            blocks.append([])
            used = fixed
        blocks[-1].append(i)
        used += widths[i]
    return [frame.iloc[:, list(range(keep)) + block] for block in blocks]
