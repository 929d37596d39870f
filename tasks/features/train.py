"""Training a crosscoder from the store: seeded, GPU when present, resumable.

Every ``checkpoint_every`` steps the model, the Adam state and the step count go to
``<folder>/resume/``; a killed run restarts from there and, because the batch stream is
seeded and skips the batches already seen, ends with the same weights as an uninterrupted
run (on CPU). The finished crosscoder is written last (``cfg.json`` + weights), so its
presence means the training is complete.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Iterator

import fsspec
import numpy as np
import torch
from safetensors.torch import load, save
from tqdm.auto import tqdm

from tasks.features.crosscoder import (
    CFG_FILENAME,
    Crosscoder,
    CrosscoderCfg,
    load_crosscoder,
    save_crosscoder,
)

logger = logging.getLogger(__name__)

RESUME_DIR = "resume"


def _lr_lambda(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def fit(
    model: Crosscoder,
    batches: Iterator[np.ndarray | torch.Tensor],
    n_steps: int,
    learning_rate: float,
    warmup_steps: int = 0,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    on_checkpoint: Callable[[int, Crosscoder, torch.optim.Optimizer], None] | None = None,
    checkpoint_every: int = 0,
    dead_after: int = 200,
) -> dict[str, float]:
    """Run Adam steps ``start_step .. n_steps-1`` on ``batches`` [B, n_models, d_in].

    A latent that has not fired for ``dead_after`` steps is dead and gets the AuxK loss.
    ``on_checkpoint(step, model, optimizer)`` is called every ``checkpoint_every`` steps
    (after the step) with the number of steps done. Returns the last step's loss parts.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    lr_at = _lr_lambda(warmup_steps)
    parts: dict[str, float] = {}
    bar = tqdm(total=n_steps, initial=start_step, desc="crosscoder", unit="step", disable=None)
    for step in range(start_step, n_steps):
        batch = next(batches)
        x = torch.as_tensor(batch, dtype=torch.float32).to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * lr_at(step)
        loss, parts, fired = model.loss(x, model.idle_steps > dead_after)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward()
        optimizer.step()
        model.after_step()
        model.idle_steps.add_(1).masked_fill_(fired, 0)
        bar.update(1)
        if step % 20 == 0:
            dead = float((model.idle_steps > dead_after).float().mean())
            bar.set_postfix(mse=f"{parts['mse']:.4g}", l0=f"{parts['l0']:.1f}", dead=f"{dead:.3f}")
        done = step + 1
        if on_checkpoint is not None and checkpoint_every and done % checkpoint_every == 0:
            on_checkpoint(done, model, optimizer)
    bar.close()
    return parts


class ResumeState:
    """The resumable training state of one crosscoder under ``<folder>/resume/``."""

    def __init__(self, fs: fsspec.AbstractFileSystem, folder: str) -> None:
        self.fs, self.dir = fs, f"{folder}/{RESUME_DIR}"

    def save(self, step: int, model: Crosscoder, optimizer: torch.optim.Optimizer) -> None:
        """Write weights, optimizer state, then the step (the step file marks it complete)."""
        self.fs.makedirs(self.dir, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with self.fs.open(f"{self.dir}/model.safetensors", "wb") as handle:
            handle.write(save(tensors))
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        with self.fs.open(f"{self.dir}/optimizer.pt", "wb") as handle:
            handle.write(buffer.getvalue())
        with self.fs.open(f"{self.dir}/step.json", "w") as handle:
            json.dump({"step": step}, handle)
        logger.info("crosscoder checkpoint at step %d in %s", step, self.dir)

    def load(self, model: Crosscoder) -> tuple[int, dict | None]:
        """Restore ``model`` in place; returns (steps done, optimizer state) or (0, None)."""
        if not self.fs.exists(f"{self.dir}/step.json"):
            return 0, None
        with self.fs.open(f"{self.dir}/step.json") as handle:
            step = int(json.load(handle)["step"])
        with self.fs.open(f"{self.dir}/model.safetensors", "rb") as handle:
            model.load_state_dict(load(handle.read()))
        with self.fs.open(f"{self.dir}/optimizer.pt", "rb") as handle:
            state = torch.load(io.BytesIO(handle.read()), weights_only=True, map_location="cpu")
        logger.info("resuming crosscoder from step %d (%s)", step, self.dir)
        return step, state

    def clear(self) -> None:
        """Remove the resume state once the finished model is saved."""
        if self.fs.exists(self.dir):
            self.fs.rm(self.dir, recursive=True)


def train_crosscoder(
    cfg: CrosscoderCfg,
    make_batches: Callable[[int], Iterator[np.ndarray]],
    folder_url: str,
    *,
    n_steps: int,
    learning_rate: float,
    warmup_steps: int = 0,
    checkpoint_every: int = 200,
    device: str | torch.device = "cpu",
    init_batches: int = 4,
) -> Crosscoder:
    """Train (or finish, or just load) the crosscoder saved at ``folder_url``.

    ``make_batches(start_step)`` returns the seeded batch stream [B, 2, d_in] from
    ``start_step`` on. The first ``init_batches`` batches of step 0's stream set the
    normalisation and decoder bias. Returns the trained model on ``device``.
    """
    fs, folder = fsspec.core.url_to_fs(folder_url)
    if fs.exists(f"{folder}/{CFG_FILENAME}"):
        logger.info("crosscoder already trained at %s", folder_url)
        return load_crosscoder(folder, fs=fs, device=device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = Crosscoder(cfg, generator=generator)
    stream = make_batches(0)
    model.init_from_sample(
        torch.as_tensor(np.concatenate([next(stream) for _ in range(init_batches)]))
    )
    state = ResumeState(fs, folder)
    start, opt_state = state.load(model)
    model.to(device)
    if opt_state is not None:
        stream = make_batches(start)
    else:
        stream = make_batches(0)
    fit(
        model,
        stream,
        n_steps,
        learning_rate,
        warmup_steps,
        start_step=start,
        optimizer_state=opt_state,
        on_checkpoint=state.save,
        checkpoint_every=checkpoint_every,
    )
    save_crosscoder(model, folder, fs=fs)
    state.clear()
    return model


def steps_for_budget(token_budget: int, batch_size: int) -> int:
    """Optimizer steps that consume ``token_budget`` token pairs (at least one)."""
    return max(1, math.ceil(token_budget / batch_size))
