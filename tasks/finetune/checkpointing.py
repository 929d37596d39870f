"""Writing checkpoints and the training state that lets a killed fine-tune resume exactly.

Order inside one checkpoint: weights and tokenizer, then the training state
(``<run>/checkpoints/.train-state/<label>.pt``: optimizer, scheduler, RNG, step), then
``metrics.json`` last, so a folder with ``metrics.json`` is whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from pathlib import Path

import torch

from layerdrift.config import RunConfig
from layerdrift.storage.checkpoints import (
    METRICS_FILE,
    TRAIN_STATE_DIR,
    checkpoint_complete,
    read_checkpoint_metrics,
    upload_folder,
)
from layerdrift.storage.rundir import CHECKPOINTS_DIR, RunDir

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The run holds checkpoints from a different fine-tuning configuration."""


def finetune_fingerprint(cfg: RunConfig) -> str:
    """A hash of everything that changes the fine-tuned weights (model, seed, data, finetune).

    An unset ``freeze_layers`` is left out, and so are ``method`` and ``lora`` for full
    fine-tuning (:meth:`FinetuneConfig.identity`), so checkpoints made before those fields
    existed keep their fingerprint.
    """
    finetune = cfg.finetune.identity()
    if finetune["freeze_layers"] is None:
        del finetune["freeze_layers"]
    payload = {
        "model": cfg.model,
        "trust_remote_code": cfg.trust_remote_code,
        "seed": cfg.seed,
        "data": cfg.data.model_dump(mode="json"),
        "finetune": finetune,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _state_path(run: RunDir, label: str) -> str:
    return run.path(CHECKPOINTS_DIR, TRAIN_STATE_DIR, f"{label}.pt")


def check_fingerprint(run: RunDir, label: str, fingerprint: str) -> None:
    """Refuse a complete checkpoint written under another fine-tuning configuration."""
    found = read_checkpoint_metrics(run, label).get("fingerprint")
    if found != fingerprint:
        raise CheckpointMismatchError(
            f"checkpoint {label!r} in {run.url} was made with another model, data or "
            f"fine-tuning config (fingerprint {found}, this config {fingerprint}): use a new "
            "run name, or delete the run's checkpoints folder to fine-tune again"
        )


def has_train_state(run: RunDir, label: str) -> bool:
    """Whether the resumable training state saved at checkpoint ``label`` exists."""
    return run.fs.exists(_state_path(run, label))


def load_train_state(run: RunDir, label: str, device: torch.device) -> dict:
    """The training state saved at ``label``: step, tokens, optimizer, scheduler, RNG states."""
    with run.fs.open(_state_path(run, label), "rb") as handle:
        buffer = io.BytesIO(handle.read())
    return torch.load(buffer, map_location=device, weights_only=True)


def capture_rng() -> dict:
    """The torch RNG states (CPU and every CUDA device) that drive dropout."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def restore_rng(rng: dict) -> None:
    """Put back RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(rng["cpu"].cpu())
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])


def _save_folder(folder: Path, model, tokenizer) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def write_checkpoint(
    run: RunDir, label: str, model, tokenizer, metrics: dict, train_state: dict
) -> None:
    """Save one checkpoint folder and its training state; ``metrics.json`` goes last.

    A stale ``metrics.json`` of the same label is removed first, so an interrupted rewrite
    never looks complete. Remote runs are written to a local temporary folder and uploaded.
    """
    metrics_path = run.path(CHECKPOINTS_DIR, label, METRICS_FILE)
    if run.fs.exists(metrics_path):
        run.fs.rm(metrics_path)
    run.makedirs(CHECKPOINTS_DIR, TRAIN_STATE_DIR)
    if run.is_local:
        _save_folder(Path(run.path(CHECKPOINTS_DIR, label)), model, tokenizer)
        torch.save(train_state, _state_path(run, label))
    else:
        with tempfile.TemporaryDirectory(prefix="layerdrift-ckpt-") as tmp:
            _save_folder(Path(tmp) / label, model, tokenizer)
            upload_folder(run, Path(tmp) / label, CHECKPOINTS_DIR, label)
            torch.save(train_state, Path(tmp) / "state.pt")
            run.fs.put_file(str(Path(tmp) / "state.pt"), _state_path(run, label))
    run.write_text(json.dumps(metrics, indent=2), CHECKPOINTS_DIR, label, METRICS_FILE)
    logger.info("wrote checkpoint %s to %s", label, run.checkpoint(label))


def prune_train_states(run: RunDir, keep: str) -> None:
    """Delete saved training states other than ``keep`` (only the newest is needed)."""
    folder = run.path(CHECKPOINTS_DIR, TRAIN_STATE_DIR)
    for entry in run.fs.ls(folder, detail=False):
        if not entry.rstrip("/").endswith(f"/{keep}.pt"):
            run.fs.rm(entry)


def resume_point(run: RunDir, planned: list[tuple[int, str]], fingerprint: str) -> str | None:
    """The checkpoint to resume from: the last one with a saved training state inside the
    unbroken run of complete checkpoints at the start of the schedule (None: start afresh).
    """
    found = None
    for _, label in planned:
        if not checkpoint_complete(run, label):
            break
        check_fingerprint(run, label, fingerprint)
        if has_train_state(run, label):
            found = label
    return found
