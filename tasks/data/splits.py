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
from layerdrift.tasks.data.probe import is_labelled, load_probe_set
from layerdrift.tasks.data.sources import DatasetError, load_labelled_texts

logger = logging.getLogger(__name__)

DATASET_INFO = "dataset.json"


def split_frame(
    frame: pd.DataFrame, cfg: DataConfig, seed: int, with_probe: bool = True
) -> dict[str, pd.DataFrame]:
    """Stratified, seeded split into ``train``, ``validation`` and ``probe`` of the asked sizes
    (without ``with_probe``: ``train`` and ``validation`` only, the probe set has its own
    source).

    Each split keeps the columns of ``frame`` plus ``id`` (the row in the cleaned dataset).
    Rows beyond the sizes are left out.
    """
    probe_size = cfg.probe_size if with_probe else 0
    asked = cfg.train_size + cfg.val_size + probe_size
    if len(frame) < asked:
        probe_part = f" + probe {cfg.probe_size}" if with_probe else ""
        raise DatasetError(
            f"the dataset has {len(frame)} usable texts but the splits ask for {asked} "
            f"(train {cfg.train_size} + validation {cfg.val_size}{probe_part}): "
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
        if not with_probe:
            splits = {"train": train, "validation": rest}
            return {k: v.reset_index(drop=True) for k, v in splits.items()}
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


def make_splits(cfg: RunConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """The run's splits and what ``dataset.json`` records about them (label names, identity;
    with ``[probe]``, the probe set's label names and identity too).

    With ``probe.dataset`` the probe set comes from that source; a run of given checkpoints
    then reads no training data at all (its train and validation splits are empty).
    """
    if cfg.probe.dataset is None:
        frame, names, identity = load_labelled_texts(cfg.data)
        splits = split_frame(frame, cfg.data, cfg.seed)
        return splits, {"label_names": names, "identity": identity}
    probe, probe_names, probe_identity = load_probe_set(cfg)
    about = {"probe_label_names": probe_names, "probe_identity": probe_identity}
    if cfg.imports_checkpoints or cfg.tasks:  # the tasks' series hold their own splits
        empty = probe.iloc[:0]
        splits = {"train": empty, "validation": empty, "probe": probe}
        return splits, {"label_names": probe_names, "identity": probe_identity, **about}
    frame, names, identity = load_labelled_texts(cfg.data)
    # A model must not train on the texts it is measured on (the probe source may be the
    # training dataset itself, as in a run of several tasks).
    seen = frame["text"].isin(set(probe["text"]))
    if seen.any():
        logger.info("left %d probe texts out of the training data", int(seen.sum()))
        frame = frame[~seen].reset_index(drop=True)
    splits = split_frame(frame, cfg.data, cfg.seed, with_probe=False) | {"probe": probe}
    return splits, {"label_names": names, "identity": identity, **about}


def check_data(cfg: RunConfig) -> dict[str, int]:
    """Load, clean and split the configured dataset (and probe source) in memory, writing
    nothing.

    Raises :class:`DatasetError` naming the problem (unreadable file, encoding, missing
    column, fewer than 2 classes, splits larger than the data) before a run starts. Returns
    the split sizes.
    """
    splits, _ = make_splits(cfg)
    return {split: len(part) for split, part in splits.items()}


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
    if cfg.probe.dataset is not None:
        wanted["probe_config"] = cfg.probe.model_dump(mode="json")
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
    splits, about = make_splits(cfg)
    for split, part in splits.items():
        run.write_text(part.to_json(orient="records", lines=True), DATA_DIR, f"{split}.jsonl")
    info = {**about, "split_sizes": {k: len(v) for k, v in splits.items()}, **wanted}
    run.write_text(json.dumps(info, indent=2), DATA_DIR, DATASET_INFO)  # last: the marker
    logger.info("wrote %s splits to %s", info["split_sizes"], run.child_url(DATA_DIR))
    return run.child_url(DATA_DIR)


def probe_set_labelled(run: RunDir) -> bool:
    """Whether the run's probe split has labels (a probe source without them has none)."""
    return is_labelled(read_split(run, "probe")["label"].to_numpy())
