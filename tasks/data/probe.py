"""A probe set from its own source (``[probe]``): sampled, seeded, labels optional.

Runs of different tasks on one base model that name the same probe source, size and seed
record the same texts, so their stores can be compared layer by layer.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from layerdrift.config import DataConfig, RunConfig
from layerdrift.tasks.data.sources import DatasetError, clean_texts, read_texts, text_identity

logger = logging.getLogger(__name__)

# The label of a probe example whose source has no labels.
UNLABELLED = -1
# Why the report has no probes and no task-specific latents for such a probe set.
UNLABELLED_NOTE = (
    "the probe set has no labels, so linear probes and task-specific latents are skipped: "
    "set probe.label_column to a label column of the probe dataset to get them"
)


def probe_size(cfg: RunConfig) -> int:
    """Examples in the probe set: ``probe.size``, else ``data.probe_size``."""
    return cfg.probe.size if cfg.probe.size is not None else cfg.data.probe_size


def _clean_unlabelled(raw: pd.DataFrame) -> pd.DataFrame:
    """Texts stripped, empty and duplicate ones dropped (first kept), label ``UNLABELLED``."""
    texts = raw["text"].map(lambda v: v.strip() if isinstance(v, str) else "")
    texts = texts[texts != ""].drop_duplicates(keep="first")
    return pd.DataFrame({"text": texts.astype(str), "label": UNLABELLED}).reset_index(drop=True)


def load_probe_set(cfg: RunConfig) -> tuple[pd.DataFrame, list[str], dict]:
    """The probe set of ``[probe]``: ``(frame, label_names, identity)``.

    ``frame`` has ``text``, ``label`` (0..K-1, or ``UNLABELLED`` when the source has no label
    column: ``label_names`` is then empty) and ``id`` (the row in the cleaned source); rows
    are a seeded uniform sample of ``probe.size`` (the same texts whatever the labels).
    """
    probe = cfg.probe
    if probe.dataset is None:
        raise ValueError("probe.dataset is not set: the probe set is a split of data.dataset")
    source_cfg = DataConfig(
        dataset=probe.dataset,
        text_column=probe.text_column,
        label_column=probe.label_column or "label",
        hf_split=probe.hf_split,
    )
    raw, source = read_texts(source_cfg, labelled=False)  # labels are optional
    if probe.label_column and raw["label"].notna().any():
        frame, names = clean_texts(raw)
    else:
        frame, names = _clean_unlabelled(raw), []
        logger.info("probe set %s has no labels: probes and task latents are skipped", source)
    size = probe_size(cfg)
    if len(frame) < size:
        raise DatasetError(
            f"probe dataset {probe.dataset} has {len(frame)} usable texts but probe.size asks "
            f"for {size}: lower probe.size (or data.probe_size)"
        )
    seed = probe.seed if probe.seed is not None else cfg.seed
    rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=size, replace=False))
    picked = frame.iloc[rows].assign(id=rows).reset_index(drop=True)
    return picked, names, text_identity(probe.dataset, source, frame, names)


def is_labelled(labels: np.ndarray) -> bool:
    """Whether a probe set's labels are real (not ``UNLABELLED``)."""
    return bool(len(labels)) and bool((np.asarray(labels) != UNLABELLED).all())
