"""Tokenised splits, the checkpoint schedule and length-bucketed, dynamically padded batches."""

from __future__ import annotations

import math

import numpy as np
import torch

from layerdrift.config import RunConfig
from layerdrift.storage.checkpoints import step_label

BUCKET_BATCHES = 50  # batches per length bucket: sort within, shuffle across


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one pass over ``n_train`` examples (the last batch may be short)."""
    return math.ceil(n_train / batch_size)


def total_steps(cfg: RunConfig, n_train: int) -> int:
    """All optimizer steps of the fine-tune: ``ceil(epochs * steps_per_epoch)``, at least 1."""
    per_epoch = steps_per_epoch(n_train, cfg.finetune.batch_size)
    return max(1, math.ceil(cfg.finetune.epochs * per_epoch))


def planned_checkpoints(cfg: RunConfig, n_train: int) -> list[tuple[int, str]]:
    """The checkpoint schedule as ``(step, label)`` pairs in step order.

    Fractions of :func:`total_steps` are rounded to whole steps; step 0 is ``base``, the last
    step ``final``, the others ``step-NNNNNN``. Fractions landing on the same step merge.
    """
    total = total_steps(cfg, n_train)
    steps = sorted({round(f * total) for f in cfg.finetune.checkpoints} | {0, total})
    labels = {0: "base", total: "final"}
    return [(step, labels.get(step, step_label(step))) for step in steps]


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
    """Tokenise without padding, truncating to ``max_length``.

    Returns the tokenizer's fields (``input_ids``, ``attention_mask``, ...) as ragged lists,
    one list of ids per text.
    """
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return {key: list(value) for key, value in encoded.items()}


def bucketed_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator) -> list:
    """One epoch of batches (arrays of example indices), grouped by length to cut padding.

    A seeded permutation is cut into buckets of ``BUCKET_BATCHES`` batches; each bucket is
    sorted by length and cut into batches; the batch order is shuffled again. The same
    generator state always gives the same batches, and there are always
    ``ceil(len(lengths) / batch_size)`` of them.
    """
    order = torch.randperm(len(lengths), generator=generator).numpy()
    span = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), span):
        bucket = order[start : start + span]
        bucket = bucket[np.argsort(lengths[bucket], kind="stable")]
        batches.extend(bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def epoch_batches(n_epoch: int, seed: int, lengths: np.ndarray, batch_size: int) -> list:
    """The batches of epoch ``n_epoch``, from a generator seeded by ``(seed, n_epoch)``."""
    generator = torch.Generator().manual_seed(seed * 100_003 + n_epoch)
    return bucketed_batches(lengths, batch_size, generator)


def pad_batch(
    encoded: dict[str, list[list[int]]], indices, pad_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad the examples ``indices`` to their longest: each field becomes a (batch, seq) tensor.

    ``input_ids`` are padded with ``pad_id``, every other field (attention mask, token type
    ids) with 0.
    """
    width = max(len(encoded["input_ids"][i]) for i in indices)
    batch = {}
    for key, rows in encoded.items():
        fill = pad_id if key == "input_ids" else 0
        padded = []
        for i in indices:
            pad = [fill] * (width - len(rows[i]))
            padded.append(pad + rows[i] if side == "left" else rows[i] + pad)
        batch[key] = torch.tensor(padded, dtype=torch.long)
    return batch
