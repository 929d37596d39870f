"""Validation metrics of a sequence classifier: loss, accuracy, confusion matrix."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from layerdrift.tasks.finetune.batches import pad_batch


@torch.no_grad()
def evaluate(
    model,
    encoded: dict[str, list[list[int]]],
    labels: np.ndarray,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    num_labels: int,
) -> dict:
    """Mean cross-entropy, accuracy and confusion matrix of ``model`` on encoded examples.

    ``labels`` has shape (n,) with values in 0..num_labels-1. Batches are sorted by length
    (no randomness is drawn). Returns ``val_loss``, ``val_accuracy`` and
    ``confusion_matrix`` (num_labels × num_labels list; rows true, columns predicted).
    The model is left in training mode.
    """
    model.eval()
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    predictions = np.empty(len(labels), dtype=np.int64)
    loss_sum = 0.0
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch(encoded, indices, pad_id).items()}
        target = torch.as_tensor(labels[indices], device=device)
        logits = model(**batch).logits.float()  # (batch, num_labels)
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        predictions[indices] = logits.argmax(dim=-1).cpu().numpy()
    model.train()
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return {
        "val_loss": loss_sum / len(labels),
        "val_accuracy": float((predictions == labels).mean()),
        "confusion_matrix": confusion.tolist(),
    }
