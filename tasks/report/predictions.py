"""Each checkpoint's prediction on each probe example, for the explorer's token view.

The extract stage records hidden states without the classification head, and the finetune
stage keeps only validation metrics, so nothing stores per-example predictions. The report
computes them once: every checkpoint folder's sequence classifier runs on the probe tokens
exactly as the activation store holds them (its token ids, special tokens included), and
the class probabilities go into the results group ``probe_predictions`` (checkpoint,
example, class). A later report reuses the group while the store generation and the
checkpoints' weights are the same. The ``base`` checkpoint's head is untrained: its
predictions are chance, which the page says.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from layerdrift.storage.activations import read_attrs
from layerdrift.storage.checkpoints import checkpoint_complete, local_checkpoint_path
from layerdrift.storage.results import list_results, open_result, write_result
from layerdrift.storage.results_schema import RESULT_GROUPS
from layerdrift.storage.rundir import CHECKPOINTS_DIR, RunDir
from layerdrift.tasks.modeling.load import load_classifier as load_saved_classifier

logger = logging.getLogger(__name__)

GROUP = "probe_predictions"
# Padded tokens per batch. Sized by the widest example: sized by the shortest, one batch
# took the whole quick probe set padded to its longest (2.5 s a checkpoint; 1.26 s now).
BATCH_TOKENS = 2048


def _identity(run: RunDir, checkpoints: list[str]) -> dict:
    """What the predictions were made from: store generation and checkpoint weights."""
    attrs = read_attrs(run.activations()) or {}
    models = attrs.get("models", {})
    return {
        "store_generation": str(attrs.get("generation") or ""),
        "weights": [str(models.get(c, {}).get("weights_sha256", "")) for c in checkpoints],
    }


def load_classifier(model_dir) -> torch.nn.Module:
    """A saved sequence classifier in eval mode (CPU)."""
    return load_saved_classifier(model_dir).eval()


@torch.no_grad()
def class_probabilities(
    model: torch.nn.Module, token_ids: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Softmax of ``model``'s logits on each example: [n_examples, n_classes] float32.

    ``token_ids`` [n_tokens] are the store's tokens, example ``e`` being
    ``token_ids[starts[e] : starts[e] + counts[e]]``. Examples run in batches of similar
    length, padded with the model's pad id under a zero attention mask.
    """
    pad = int(getattr(model.config, "pad_token_id", None) or 0)
    order = np.argsort(counts, kind="stable")
    out = np.zeros((len(counts), model.config.num_labels), dtype=np.float32)
    i = 0
    while i < len(order):
        # Sorted by length, so the last example of a batch is its widest: a batch grows
        # while its padded size stays within BATCH_TOKENS.
        n = 1
        while i + n < len(order) and (n + 1) * int(counts[order[i + n]]) <= BATCH_TOKENS:
            n += 1
        batch = order[i : i + n]
        width = int(counts[batch].max())
        ids = np.full((len(batch), width), pad, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, e in enumerate(batch):
            ids[row, : counts[e]] = token_ids[starts[e] : starts[e] + counts[e]]
            mask[row, : counts[e]] = 1
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        out[batch] = torch.softmax(logits.logits.float(), dim=-1).numpy()
        i += len(batch)
    return out


def _num_labels(run: RunDir, label: str) -> int:
    """Classes of a checkpoint's classification head, from its saved ``config.json``."""
    config = json.loads(run.read_text(CHECKPOINTS_DIR, label, "config.json"))
    return len(config.get("id2label") or {}) or int(config.get("num_labels", 2))


def probe_predictions(run: RunDir, store: xr.Dataset) -> xr.DataArray | None:
    """Class probabilities (checkpoint, example, class) of every checkpoint with a folder.

    Reads the results group when it is current, else computes and writes it. None when no
    checkpoint folder of the store is on disk.
    """
    labels = [str(c) for c in store.checkpoint.values]
    present = [c for c in labels if checkpoint_complete(run, c)]
    # In a run of several tasks only the heads trained on the probe set's classes (as many
    # as base's) predict them; the other tasks' heads answer another question.
    classes = {c: _num_labels(run, c) for c in present}
    other = [c for c in present if classes[c] != classes[present[0]]] if present else []
    if other:
        logger.info("no probe predictions of %s: their heads have other classes", other)
        present = [c for c in present if c not in other]
    if not present:
        return None
    identity = _identity(run, present)
    if GROUP in list_results(run.results()):
        stored = open_result(run.results(), GROUP)[GROUP]
        same = [str(c) for c in stored.checkpoint.values] == present
        if same and all(stored.attrs.get(k) == v for k, v in identity.items()):
            return stored.load()
    token_ids = np.asarray(store.token_id.values)
    starts = np.asarray(store.token_start.values)
    counts = np.asarray(store.token_count.values)
    probabilities = []
    for label in tqdm(present, desc="probe predictions", unit="checkpoint", disable=None):
        model = load_classifier(local_checkpoint_path(run, label))
        probabilities.append(class_probabilities(model, token_ids, starts, counts))
    values = np.stack(probabilities)
    array = (
        RESULT_GROUPS[GROUP]
        .new(
            values,
            checkpoint=present,
            example=np.arange(values.shape[1]),
            **{"class": np.arange(values.shape[2])},
        )
        .assign_attrs(identity)
    )
    write_result(run.results(), GROUP, array)
    logger.info("probe predictions of %s written to %s", present, run.results())
    return array
