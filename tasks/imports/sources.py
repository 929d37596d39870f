"""Where given checkpoints come from: ``checkpoints`` (label -> folder or name), a Trainer
output folder (``checkpoints_from``), and PEFT adapter folders among them.

Only JSON files are read here (``trainer_state.json``, ``config.json``,
``adapter_config.json``); a Trainer folder's pickles (``training_args.bin``,
``optimizer.pt``, ``rng_state.pth``) are never opened.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from layerdrift.config import REFERENCE_LABEL, RunConfig
from layerdrift.storage.checkpoints import step_label
from layerdrift.tasks.modeling import resolve_model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# File names a saved tokenizer starts with (an adapter folder may carry one).
TOKENIZER_PREFIXES = ("tokenizer", "vocab", "spiece", "sentencepiece", "merges")
TRAINER_STATE = "trainer_state.json"
TRAINER_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# trainer_state.json log keys -> the metrics.json keys of layerdrift's own checkpoints.
TRAINER_METRICS = {
    "loss": "train_loss",
    "eval_loss": "val_loss",
    "eval_accuracy": "val_accuracy",
    "epoch": "epoch",
}


class CheckpointImportError(ValueError):
    """A given checkpoint that cannot be imported; the message names it and the fix."""


@dataclass(frozen=True)
class GivenCheckpoint:
    """One checkpoint to import: its label, where it is, its step and known metrics."""

    label: str
    source: str
    step: int
    metrics: dict = field(default_factory=dict, compare=False)

    @property
    def is_adapter(self) -> bool:
        """Whether ``source`` is a PEFT adapter folder (merged onto its base when loaded)."""
        return (Path(self.source) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> str:
    """The base model a PEFT adapter folder names (``base_model_name_or_path``)."""
    config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise CheckpointImportError(
            f"adapter {folder} names no base model (base_model_name_or_path in "
            f"{ADAPTER_CONFIG}): set it to the base model's name or folder"
        )
    return str(base)


def model_source(item: GivenCheckpoint) -> str:
    """The resolved folder (or hub name) whose weights and config ``item`` starts from: its
    own, or, for an adapter, its base model's."""
    return resolve_model(adapter_base(item.source) if item.is_adapter else item.source)


def tokenizer_source(item: GivenCheckpoint) -> str:
    """Where ``item``'s tokenizer is: an adapter's own folder when it saved one, else the
    model's."""
    if item.is_adapter and any(
        entry.name.startswith(TOKENIZER_PREFIXES) for entry in Path(item.source).iterdir()
    ):
        return item.source
    return model_source(item)


def trainer_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N/`` of a Trainer output folder as (N, path), in step order."""
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointImportError(
            f"checkpoints_from {root} is not a folder: give a Trainer output_dir"
        )
    found = [
        (int(match.group(1)), entry)
        for entry in root.iterdir()
        if entry.is_dir() and (match := TRAINER_CHECKPOINT.fullmatch(entry.name))
    ]
    if not found:
        raise CheckpointImportError(
            f"checkpoints_from {root} holds no checkpoint-N/ folders: give the Trainer's "
            "output_dir (where it saved checkpoint-500/, checkpoint-1000/, ...)"
        )
    return sorted(found)


def trainer_metrics(folder: Path, step: int) -> dict:
    """Metrics logged at ``step`` in the checkpoint's (or the run's) ``trainer_state.json``."""
    for state_file in (folder / TRAINER_STATE, folder.parent / TRAINER_STATE):
        if state_file.is_file():
            history = json.loads(state_file.read_text()).get("log_history", [])
            metrics: dict = {}
            for entry in history:
                if entry.get("step") == step:
                    metrics |= {
                        new: entry[old] for old, new in TRAINER_METRICS.items() if old in entry
                    }
            return metrics
    return {}


def named_base(folder: Path) -> str | None:
    """The base model a Trainer checkpoint names: its adapter's base, else ``_name_or_path``."""
    if (folder / ADAPTER_CONFIG).is_file():
        return adapter_base(folder)
    config_file = folder / "config.json"
    if config_file.is_file():
        name = json.loads(config_file.read_text()).get("_name_or_path")
        if name and Path(name).resolve() != folder.resolve():
            return str(name)
    return None


def given_checkpoints(cfg: RunConfig) -> list[GivenCheckpoint]:
    """The run's checkpoints to import, reference (``base``) first, in order.

    ``checkpoints`` keeps its labels and order (steps 0, 1, 2, ...); a Trainer folder adds its
    ``checkpoint-N/`` folders as ``step-NNNNNN`` (the last as ``final``, like a fine-tune of
    this run), with their logged metrics. The base is ``checkpoints.base``, else the model
    the Trainer folder names, else ``model``.
    """
    given = dict(cfg.checkpoints)
    series: list[GivenCheckpoint] = []
    if cfg.checkpoints_from is not None:
        found = trainer_checkpoints(cfg.checkpoints_from)
        for index, (step, path) in enumerate(found):
            label = "final" if index == len(found) - 1 else step_label(step)
            series.append(GivenCheckpoint(label, str(path), step, trainer_metrics(path, step)))
        if REFERENCE_LABEL not in given:
            given = {REFERENCE_LABEL: named_base(found[0][1]) or cfg.model, **given}
    if REFERENCE_LABEL not in given:
        given = {REFERENCE_LABEL: cfg.model, **given}
    out = [GivenCheckpoint(label, src, i) for i, (label, src) in enumerate(given.items())]
    out += series
    labels = [c.label for c in out]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise CheckpointImportError(
            f"checkpoint labels {twice} are given twice (checkpoints and checkpoints_from): "
            "rename one"
        )
    return out
