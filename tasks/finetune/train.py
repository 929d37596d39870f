"""The fine-tuning loop: AdamW, linear warm-up schedule, clipping, bucketed batches, resume.

``finetune.method`` picks what trains: every weight (``full``, less any ``freeze_layers``)
or LoRA updates and the head (``lora``, :mod:`tasks.finetune.lora`); both save checkpoints
in one layout.

Everything random is seeded: the classifier head by ``cfg.seed`` before loading, the batch
order by one generator per epoch, dropout by the torch RNG whose state is saved at every
checkpoint. A run resumed from checkpoint ``c`` therefore replays exactly the steps an
uninterrupted run takes after ``c`` and ends with the same weights.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from layerdrift.config import RunConfig
from layerdrift.storage.checkpoints import (
    checkpoint_complete,
    local_checkpoint_path,
    read_checkpoint_metrics,
)
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data import data_complete, read_dataset_info, read_split
from layerdrift.tasks.finetune.batches import (
    encode_texts,
    epoch_batches,
    pad_batch,
    planned_checkpoints,
    steps_per_epoch,
    total_steps,
)
from layerdrift.tasks.finetune.checkpointing import (
    capture_rng,
    finetune_fingerprint,
    load_train_state,
    prune_train_states,
    restore_rng,
    resume_point,
    write_checkpoint,
)
from layerdrift.tasks.finetune.evaluate import evaluate
from layerdrift.tasks.finetune.freeze import freeze
from layerdrift.tasks.finetune.lora import (
    adapter_state,
    load_adapter_state,
    lora_metrics,
    merged_copy,
    wrap_lora,
)
from layerdrift.tasks.modeling import (
    load_classifier,
    load_tokenizer,
    resolve_model,
    select_device,
)
from layerdrift.tasks.optimizers import adamw

logger = logging.getLogger(__name__)


def finetune_complete(run: RunDir, cfg: RunConfig) -> bool:
    """Whether every scheduled checkpoint of ``cfg`` is complete in ``run`` (same config)."""
    if not data_complete(run):
        return False
    n_train = read_dataset_info(run)["split_sizes"]["train"]
    fingerprint = finetune_fingerprint(cfg)
    return all(
        checkpoint_complete(run, label)
        and read_checkpoint_metrics(run, label).get("fingerprint") == fingerprint
        for _, label in planned_checkpoints(cfg, n_train)
    )


def finished_checkpoints(run: RunDir, cfg: RunConfig) -> list[str]:
    """Labels of the scheduled checkpoints complete in ``run``, in step order."""
    n_train = read_dataset_info(run)["split_sizes"]["train"]
    return [
        label for _, label in planned_checkpoints(cfg, n_train) if checkpoint_complete(run, label)
    ]


def build_optimizer(model, cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and LayerNorm weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.finetune.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return adamw(groups, cfg.finetune.learning_rate)


class _Trainer:
    """One fine-tune of one run: data, model, optimizer and the checkpoint bookkeeping."""

    def __init__(self, run: RunDir, cfg: RunConfig) -> None:
        from transformers import get_linear_schedule_with_warmup

        self.run, self.cfg = run, cfg
        self.names = read_dataset_info(run)["label_names"]
        train, val = read_split(run, "train"), read_split(run, "validation")
        self.planned = planned_checkpoints(cfg, len(train))
        self.total = total_steps(cfg, len(train))
        self.per_epoch = steps_per_epoch(len(train), cfg.finetune.batch_size)
        self.fingerprint = finetune_fingerprint(cfg)
        self.device = select_device(cfg.device)
        self.tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id  # the padding policy guarantees one
        max_length = cfg.data.max_length
        self.train_enc = encode_texts(self.tokenizer, train["text"].tolist(), max_length)
        self.val_enc = encode_texts(self.tokenizer, val["text"].tolist(), max_length)
        self.train_labels = train["label"].to_numpy(np.int64)  # (n_train,)
        self.val_labels = val["label"].to_numpy(np.int64)  # (n_val,)
        self.lengths = np.array([len(ids) for ids in self.train_enc["input_ids"]])

        self.resumed_from = resume_point(run, self.planned, self.fingerprint)
        self.lora = cfg.finetune.method == "lora"
        self.model = self._load_model().to(self.device).train()
        self.optimizer = build_optimizer(self.model, cfg)
        warmup = round(cfg.finetune.warmup_fraction * self.total)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, self.total)
        self.step, self.tokens = 0, 0
        # Seconds spent training before this session (kept in the training state), and
        # when this session's training began (set by fit).
        self.seconds_before, self.started = 0.0, time.perf_counter()
        if self.resumed_from is not None:
            state = load_train_state(run, self.resumed_from, self.device)
            if self.lora:
                load_adapter_state(self.model, state["adapter"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_rng(state["rng"])
            self.step, self.tokens = int(state["step"]), int(state["tokens"])
            self.seconds_before = float(state.get("seconds", 0.0))
            logger.info("resuming %s from checkpoint %s", run.url, self.resumed_from)

    def _load_model(self) -> torch.nn.Module:
        """The model to train, with ``self.counts`` (trainable and total parameters) set.

        Full fine-tuning resumes from the last checkpoint's weights. LoRA always starts from
        the base model (a merged checkpoint cannot be split again): its trained tensors come
        back from the training state, and the seeded initialisation keeps the rest equal.
        """
        cfg = self.cfg
        if self.resumed_from is None or self.lora:
            torch.manual_seed(cfg.seed)
            source = resolve_model(cfg.model)
        else:
            source = str(local_checkpoint_path(self.run, self.resumed_from))
        # Any supported family; a decoder's classifier gets the tokenizer's pad id.
        model = load_classifier(source, self.tokenizer, self.names, cfg.trust_remote_code)
        if not self.lora:
            self.counts = freeze(model, cfg.finetune.frozen())
            return model
        total = sum(p.numel() for p in model.parameters())
        model, plan = wrap_lora(model, cfg.finetune.lora)
        self.counts = lora_metrics(model, plan, cfg.finetune.lora, total)
        return model

    def checkpoint(self, label: str, train_loss: float | None) -> None:
        """Evaluate, then write checkpoint ``label`` with its metrics and training state.

        ``finetune_seconds`` is the wall time from the start of training to here (steps,
        evaluations and the checkpoints written before, summed over resumed sessions; loading
        the data and the model excluded).
        """
        metrics = {
            "label": label,
            "step": self.step,
            "epoch": self.step / self.per_epoch,
            "train_loss": train_loss,
            **evaluate(
                self.model,
                self.val_enc,
                self.val_labels,
                self.cfg.finetune.eval_batch_size,
                self.device,
                self.pad_id,
                len(self.names),
            ),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "train_tokens": self.tokens,
            "total_steps": self.total,
            "label_names": self.names,
            "n_train": len(self.train_labels),
            "n_validation": len(self.val_labels),
            "fingerprint": self.fingerprint,
            "method": self.cfg.finetune.method,
            "frozen_layers": list(self.cfg.finetune.frozen()),
            **self.counts,
        }
        metrics["finetune_seconds"] = self.seconds_before + time.perf_counter() - self.started
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(),
            "seconds": metrics["finetune_seconds"],
        }
        model = self.model
        if self.lora:
            state["adapter"] = adapter_state(self.model)
            model = merged_copy(self.model)  # saved as an ordinary model of the family
        write_checkpoint(self.run, label, model, self.tokenizer, metrics, state)
        prune_train_states(self.run, keep=label)
        logger.info(
            "checkpoint %s: step %d/%d, train loss %s, val loss %.4f, val accuracy %.3f",
            label, self.step, self.total, train_loss, metrics["val_loss"],
            metrics["val_accuracy"],
        )  # fmt: skip

    def train_step(self, batch_indices: np.ndarray) -> float:
        """One optimizer step on the examples ``batch_indices``; returns the batch loss."""
        batch = pad_batch(self.train_enc, batch_indices, self.pad_id, self.tokenizer.padding_side)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        target = torch.as_tensor(self.train_labels[batch_indices], device=self.device)
        logits = self.model(**batch).logits  # (batch, num_labels)
        loss = F.cross_entropy(logits.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.finetune.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += int(self.lengths[batch_indices].sum())
        return loss.item()

    def fit(self, stop_after: int | None) -> None:
        """Train to the last step, checkpointing on schedule; stop early after
        ``stop_after`` scheduled checkpoints exist."""
        schedule = {step: (index, label) for index, (step, label) in enumerate(self.planned)}
        self.started = time.perf_counter()

        def stop(index: int) -> bool:
            return stop_after is not None and index + 1 >= stop_after

        if self.resumed_from is None:
            self.checkpoint("base", None)
            if stop(0):
                return
        elif stop(schedule[self.step][0]):
            return
        losses: list[float] = []
        epoch_seen, batches = -1, []
        desc = f"fine-tune {self.cfg.name}"
        with tqdm(total=self.total, initial=self.step, desc=desc, unit="step") as bar:
            while self.step < self.total:
                epoch, index = divmod(self.step, self.per_epoch)
                if epoch != epoch_seen:
                    batches = epoch_batches(
                        epoch, self.cfg.seed, self.lengths, self.cfg.finetune.batch_size
                    )
                    epoch_seen = epoch
                losses.append(self.train_step(batches[index]))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", epoch=epoch, refresh=False)
                if self.step in schedule:
                    ordinal, label = schedule[self.step]
                    self.checkpoint(label, float(np.mean(losses)))
                    losses = []
                    if stop(ordinal):
                        return


def finetune(run: RunDir, cfg: RunConfig, stop_after: int | None = None) -> list[str]:
    """Fine-tune ``cfg.model`` on the run's train split, writing every scheduled checkpoint.

    Resumes from the last complete checkpoint when the run holds one. ``stop_after`` stops
    once that many scheduled checkpoints exist (for tests and partial runs). Returns the
    labels of the complete checkpoints, in step order (``base``, ``step-NNNNNN``…, ``final``).
    """
    if not data_complete(run):
        raise FileNotFoundError(f"run {run.url} has no prepared data: run the data stage first")
    if finetune_complete(run, cfg):
        logger.info("fine-tuning of %s already complete", run.url)
    else:
        _Trainer(run, cfg).fit(stop_after)
    return finished_checkpoints(run, cfg)
