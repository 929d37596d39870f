"""Checkpoint folders of a run: ``<run>/checkpoints/<label>/``.

Each folder holds a ``save_pretrained`` model (safetensors), its tokenizer and
``metrics.json``, which is written last: a folder is complete only when ``metrics.json``
and the weights are both there. Labels are ``base`` (step 0), ``step-NNNNNN`` and ``final``.
Checkpoints of a remote run (any fsspec URL) are downloaded to a local cache folder before a
model is loaded from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from layerdrift.storage.rundir import CHECKPOINTS_DIR, RANDOM_MODEL_DIR, RunDir

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TRAIN_STATE_DIR = ".train-state"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
CACHE_ENV = "LAYERDRIFT_CACHE_DIR"
_CACHE_MARKER = ".metrics-copy.json"


def step_label(step: int) -> str:
    """The label of an intermediate checkpoint: ``step-NNNNNN`` (6 digits)."""
    return f"step-{step:06d}"


def checkpoint_complete(run: RunDir, label: str) -> bool:
    """Whether ``<run>/checkpoints/<label>`` holds weights and its ``metrics.json`` marker."""
    if not run.exists(CHECKPOINTS_DIR, label, METRICS_FILE):
        return False
    return any(run.exists(CHECKPOINTS_DIR, label, name) for name in WEIGHT_FILES)


def read_checkpoint_metrics(run: RunDir, label: str) -> dict:
    """The ``metrics.json`` of one checkpoint (step, epoch, train_loss, val_loss, ...)."""
    if not run.exists(CHECKPOINTS_DIR, label, METRICS_FILE):
        raise FileNotFoundError(
            f"checkpoint {label!r} of run {run.url} is missing or incomplete: run the "
            "fine-tuning stage (it resumes from the last complete checkpoint)"
        )
    return json.loads(run.read_text(CHECKPOINTS_DIR, label, METRICS_FILE))


def list_checkpoints(run: RunDir) -> list[str]:
    """Labels of the complete checkpoints of ``run``, ordered by training step."""
    if not run.exists(CHECKPOINTS_DIR):
        return []
    labels = []
    for entry in run.fs.ls(run.path(CHECKPOINTS_DIR), detail=False):
        label = entry.rstrip("/").rsplit("/", 1)[-1]
        if not label.startswith(".") and checkpoint_complete(run, label):
            labels.append(label)
    steps = {label: read_checkpoint_metrics(run, label)["step"] for label in labels}
    return sorted(labels, key=lambda label: (steps[label], label == "final"))


def _cache_root() -> Path:
    default = Path.home() / ".cache" / "layerdrift" / "checkpoints"
    return Path(os.environ.get(CACHE_ENV, default))


def local_checkpoint_path(run: RunDir, label: str) -> Path:
    """A local folder holding checkpoint ``label``, for ``from_pretrained``.

    Local runs return the folder itself. Remote runs download it once into
    ``$LAYERDRIFT_CACHE_DIR`` (default ``~/.cache/layerdrift/checkpoints``); the copy is
    fetched again when the remote ``metrics.json`` changed (a rebuilt checkpoint).
    """
    if not checkpoint_complete(run, label):
        raise FileNotFoundError(
            f"checkpoint {label!r} of run {run.url} is missing or incomplete: run the "
            "fine-tuning stage (it resumes from the last complete checkpoint)"
        )
    if run.is_local:
        return Path(run.path(CHECKPOINTS_DIR, label))
    remote_metrics = run.read_text(CHECKPOINTS_DIR, label, METRICS_FILE)
    key = hashlib.sha256(run.url.encode()).hexdigest()[:16]
    local = _cache_root() / key / label
    marker = local / _CACHE_MARKER
    if marker.is_file() and marker.read_text() == remote_metrics:
        return local
    if local.exists():
        shutil.rmtree(local)
    local.mkdir(parents=True)
    for entry in run.fs.ls(run.path(CHECKPOINTS_DIR, label), detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        run.fs.get(entry, str(local / name), recursive=True)
    marker.write_text(remote_metrics)  # last: the cached copy is complete
    logger.info("downloaded checkpoint %s of %s to %s", label, run.url, local)
    return local


def local_random_model_path(run: RunDir) -> Path:
    """The local folder of the run's random reference model (it may not exist yet).

    Local runs keep it in ``<run>/random-init``; remote runs in the local cache (see
    :func:`local_checkpoint_path`): the model is seeded, so it is rebuilt identically
    wherever it is needed, and the activation store's recorded weights hash checks that.
    """
    if run.is_local:
        return Path(run.path(RANDOM_MODEL_DIR))
    return _cache_root() / hashlib.sha256(run.url.encode()).hexdigest()[:16] / RANDOM_MODEL_DIR


def upload_folder(run: RunDir, local: Path, *parts: str) -> None:
    """Copy the files of local folder ``local`` into ``<run>/<parts>`` (remote runs)."""
    target = run.path(*parts)
    run.fs.makedirs(target, exist_ok=True)
    for file in sorted(local.rglob("*")):
        if file.is_file():
            relative = file.relative_to(local).as_posix()
            destination = f"{target}/{relative}"
            run.fs.makedirs(destination.rsplit("/", 1)[0], exist_ok=True)
            run.fs.put_file(str(file), destination)
