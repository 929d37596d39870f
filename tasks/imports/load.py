"""Import given checkpoints into ``<run>/checkpoints/<label>/``, so every later stage reads
them exactly as it reads a fine-tune of this run.

Each model is loaded through the model adapter (weights from safetensors only), a PEFT
adapter merged onto its base, and saved again with ``save_pretrained`` (safetensors) beside
its tokenizer; ``metrics.json`` goes last and records where the checkpoint came from.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from layerdrift.config import RunConfig
from layerdrift.storage.checkpoints import (
    METRICS_FILE,
    WEIGHT_FILES,
    checkpoint_complete,
    read_checkpoint_metrics,
    upload_folder,
)
from layerdrift.storage.rundir import CHECKPOINTS_DIR, RunDir
from layerdrift.tasks.data import data_complete, read_dataset_info
from layerdrift.tasks.imports.sources import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CheckpointImportError,
    GivenCheckpoint,
    adapter_base,
    given_checkpoints,
    model_source,
    tokenizer_source,
)
from layerdrift.tasks.modeling import (
    load_classifier,
    load_encoder,
    load_tokenizer,
    resolve_model,
)

logger = logging.getLogger(__name__)

# PEFT task types whose adapters were trained on a sequence classifier (head included).
CLASSIFIER_TASKS = ("SEQ_CLS",)


def check_safe_weights(source: str) -> None:
    """A local folder must hold safetensors weights: pickled ``.bin`` files are never loaded."""
    folder = Path(source)
    if not folder.is_dir():
        return  # a hub name: from_pretrained prefers its safetensors
    adapter = (folder / ADAPTER_CONFIG).is_file()
    wanted = (ADAPTER_WEIGHTS,) if adapter else WEIGHT_FILES
    if not any((folder / name).is_file() for name in wanted):
        raise CheckpointImportError(
            f"{folder} holds no {' or '.join(wanted)}: layerdrift loads safetensors only "
            "(no pickles); save it with save_pretrained(..., safe_serialization=True)"
        )


def load_adapter_merged(folder: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """A PEFT adapter folder merged onto the base model it names, as a plain model.

    A ``SEQ_CLS`` adapter goes onto the base's sequence classifier, any other onto the bare
    model (whose module names the adapter's keys follow).
    """
    try:
        from peft import PeftConfig, PeftModel
    except ModuleNotFoundError as error:
        raise CheckpointImportError(
            f"{folder} is a PEFT adapter and peft is not installed: pip install 'layerdrift[peft]'"
        ) from error
    check_safe_weights(folder)
    peft_config = PeftConfig.from_pretrained(folder)
    base = resolve_model(adapter_base(folder))
    task_type = getattr(peft_config.task_type, "value", peft_config.task_type)
    if task_type in CLASSIFIER_TASKS:
        model = load_classifier(base, trust_remote_code=trust_remote_code)
    else:
        model = load_encoder(base, torch.device("cpu"))
    merged = PeftModel.from_pretrained(model, folder, use_safetensors=True).merge_and_unload()
    return merged.eval()


def load_given(
    item: GivenCheckpoint, trust_remote_code: bool = False, label_names: list[str] | None = None
):
    """(model, tokenizer) of one given checkpoint; an adapter's tokenizer is its own when it
    saved one, else its base's.

    With ``label_names``, a classifier head of another size (or a bare encoder's missing
    one) is replaced by a new head with that many labels, as fine-tuning's base gets: the
    SAE stage scores spliced classifiers on the probe labels.
    """
    tokenizer = load_tokenizer(tokenizer_source(item), trust_remote_code)
    if item.is_adapter:
        return load_adapter_merged(item.source, trust_remote_code), tokenizer
    source = model_source(item)
    check_safe_weights(source)
    model = load_classifier(source, tokenizer, label_names, trust_remote_code)
    return model, tokenizer


def probe_label_names(run: RunDir) -> list[str] | None:
    """The probe set's label names once the data stage ran (None: unknown or unlabelled)."""
    if not data_complete(run):
        return None
    info = read_dataset_info(run)
    return info.get("probe_label_names", info["label_names"]) or None


def import_fingerprint(item: GivenCheckpoint) -> dict:
    """What identifies an imported checkpoint in its ``metrics.json``."""
    return {"imported_from": item.source, "adapter": item.is_adapter}


def import_checkpoint(run: RunDir, cfg: RunConfig, item: GivenCheckpoint) -> None:
    """Save one given checkpoint as ``<run>/checkpoints/<label>/`` (metrics.json last)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the new head of a bare encoder given is seeded
        model, tokenizer = load_given(item, cfg.trust_remote_code, probe_label_names(run))
    metrics = {"step": item.step, **item.metrics, **import_fingerprint(item)}
    stale = run.path(CHECKPOINTS_DIR, item.label, METRICS_FILE)
    if run.fs.exists(stale):
        run.fs.rm(stale)
    with tempfile.TemporaryDirectory(prefix="layerdrift-import-") as tmp:
        folder = Path(run.path(CHECKPOINTS_DIR, item.label)) if run.is_local else Path(tmp)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        if not run.is_local:
            upload_folder(run, folder, CHECKPOINTS_DIR, item.label)
    run.write_text(json.dumps(metrics, indent=2), CHECKPOINTS_DIR, item.label, METRICS_FILE)
    logger.info("imported checkpoint %s from %s", item.label, item.source)


def imported(run: RunDir, item: GivenCheckpoint) -> bool:
    """Whether ``item`` is already imported into ``run`` (from the same source)."""
    if not checkpoint_complete(run, item.label):
        return False
    recorded = read_checkpoint_metrics(run, item.label)
    return all(recorded.get(k) == v for k, v in import_fingerprint(item).items())


def import_checkpoints(run: RunDir, cfg: RunConfig) -> list[str]:
    """Import every given checkpoint not yet in ``run``; returns all labels in order."""
    items = given_checkpoints(cfg)
    todo = [item for item in items if not imported(run, item)]
    for item in tqdm(todo, desc="import checkpoints", unit="checkpoint", disable=None):
        import_checkpoint(run, cfg, item)
    return [item.label for item in items]


def imports_complete(run: RunDir, cfg: RunConfig) -> bool:
    """Whether every given checkpoint of ``cfg`` is imported into ``run``."""
    return all(imported(run, item) for item in given_checkpoints(cfg))
