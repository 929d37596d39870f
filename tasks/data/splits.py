"""Splitting a dataset and writing it into the run: ``<run>/data/{train,validation,probe}.jsonl``.

``<run>/data/dataset.json`` (label names, dataset identity, split sizes, data config) is
written last and marks the stage complete.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
from sklearn.model_selection import train_test_split

from layerdrift.config import DataConfig, RunConfig
from layerdrift.storage.rundir import DATA_DIR, SPLITS, RunDir
from layerdrift.tasks.data.sources import DatasetError, load_labelled_texts

logger = logging.getLogger(__name__)

DATASET_INFO = "dataset.json"


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


def check_data(cfg: RunConfig) -> dict[str, int]:
    """Load, clean and split the configured dataset in memory, writing nothing.

    Raises :class:`DatasetError` naming the problem (unreadable file, encoding, missing
    column, fewer than 2 classes, splits larger than the data) before a run starts. Returns
    the split sizes.
    """
    frame, _, _ = load_labelled_texts(cfg.data)
    return {split: len(part) for split, part in split_frame(frame, cfg.data, cfg.seed).items()}


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
