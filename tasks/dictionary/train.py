"""Training dictionaries from a batch stream, with resume.

:class:`Trainer` steps one Adam optimizer over one or more dictionaries fed from the same
batch [batch, n_sources, d] (one read of the store feeds the SAEs of several layers, or a
crosscoder): dictionary ``i`` sees the sources ``routes[i]``, [batch, len(routes[i]), d].
A dictionary must offer ``loss(x, dead_mask) -> (loss, parts, fired[d_sae])``,
``after_backward()``, ``after_step()`` and ``d_sae`` (:class:`.model.Dictionary`).

Resume: :meth:`Trainer.state` and :meth:`Trainer.restore` carry the models, the optimizer,
the step and the dead-latent counters; with a seeded stream that restarts at the saved step
(``ActivationLoader.batches(start_step)``), a resumed run ends with the same weights as an
uninterrupted one (on CPU).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from layerdrift.config import TrainingConfig
from layerdrift.storage.saes import TrainState
from layerdrift.tasks.optimizers import restore_layouts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings: steps, learning rate with linear warm-up and final decay."""

    n_steps: int
    learning_rate: float
    warmup_steps: int = 0
    decay_fraction: float = 0.2  # linear decay to 0 over the last 20% of steps
    dead_tokens: int = 1_000_000  # a latent not fired for this many tokens is dead (AuxK)
    checkpoint_every: int = 0  # 0: never

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        scale = 1.0
        if self.warmup_steps > 0:
            scale = min(scale, (step + 1) / self.warmup_steps)
        decay_steps = int(self.decay_fraction * self.n_steps)
        if decay_steps > 0:
            scale = min(scale, (self.n_steps - step) / decay_steps)
        return self.learning_rate * scale


def schedule_for(training: TrainingConfig) -> Schedule:
    """The schedule of a training section: ``token_budget`` tokens in ``batch_size`` steps,
    warm-up at most half of them, resumable saves every ``checkpoint_every`` steps."""
    n_steps = max(1, math.ceil(training.token_budget / training.batch_size))
    return Schedule(
        n_steps=n_steps,
        learning_rate=training.learning_rate,
        warmup_steps=min(training.warmup_steps, n_steps // 2),
        dead_tokens=training.dead_tokens,
        checkpoint_every=training.checkpoint_every,
    )


class Trainer:
    """Adam over ``models`` (each on ``device``), with dead-latent tracking and resume."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        schedule: Schedule,
        routes: Sequence[Sequence[int]] | None = None,
        desc: str = "dictionary",
    ) -> None:
        self.models, self.schedule, self.desc = list(models), schedule, desc
        # By default dictionary i reads source i.
        self.routes = [list(r) for r in (routes or [[i] for i in range(len(self.models))])]
        if len(self.routes) != len(self.models):
            raise ValueError(f"{len(self.models)} dictionaries but {len(self.routes)} routes")
        self.device = next(self.models[0].parameters()).device
        params = [p for m in self.models for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=schedule.learning_rate)
        self.step, self.tokens_seen = 0, 0
        self.since_fired = [
            torch.zeros(m.d_sae, dtype=torch.long, device=self.device) for m in self.models
        ]
        self.last_parts: list[dict[str, float]] = [{} for _ in self.models]

    def dead_fraction(self, i: int = 0) -> float:
        """Share of model ``i``'s latents not fired for ``dead_tokens`` training tokens."""
        return (self.since_fired[i] >= self.schedule.dead_tokens).float().mean().item()

    def train_step(self, batch: torch.Tensor) -> None:
        """One optimizer step on ``batch`` [B, n_sources, d] (float32, any device)."""
        x = batch.to(self.device, torch.float32, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        for i, model in enumerate(self.models):
            dead = self.since_fired[i] >= self.schedule.dead_tokens
            loss, parts, fired = model.loss(x[:, self.routes[i]], dead)
            loss.backward()
            self.since_fired[i] += x.shape[0]
            self.since_fired[i][fired] = 0
            self.last_parts[i] = parts
            model.after_backward()
        self.optimizer.step()
        for model in self.models:
            model.after_step()
        self.step += 1
        self.tokens_seen += x.shape[0]

    def fit(
        self,
        batches: Iterator[np.ndarray | torch.Tensor],
        on_checkpoint: Callable[[Trainer], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train from :attr:`step` to ``schedule.n_steps``; returns the last loss parts per model.

        ``on_checkpoint(trainer)`` runs every ``schedule.checkpoint_every`` steps.
        """
        every = self.schedule.checkpoint_every
        bar = tqdm(
            total=self.schedule.n_steps,
            initial=self.step,
            desc=self.desc,
            unit="step",
            disable=None,
        )
        tokens, started = 0, time.perf_counter()
        log_every = max(1, self.schedule.n_steps // 10)
        while self.step < self.schedule.n_steps:
            raw = next(batches)
            x = torch.from_numpy(np.ascontiguousarray(raw)) if isinstance(raw, np.ndarray) else raw
            self.train_step(x)
            tokens += x.shape[0]
            bar.update(1)
            if self.step % 10 == 0 or self.step == self.schedule.n_steps:
                parts = self.last_parts[0]
                rate = tokens / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(
                    tok_s=f"{rate:,.0f}",
                    loss=f"{parts.get('loss', float('nan')):.4g}",
                    l0=f"{parts.get('l0', float('nan')):.1f}",
                    dead=f"{self.dead_fraction(0):.3f}",
                )
            if self.step % log_every == 0 or self.step == self.schedule.n_steps:
                logger.info(
                    "%s step %d/%d: %.0f tokens/s, %s, dead %.3f", self.desc, self.step,
                    self.schedule.n_steps, tokens / max(time.perf_counter() - started, 1e-9),
                    ", ".join(f"{k} {v:.4g}" for k, v in self.last_parts[0].items()),
                    self.dead_fraction(0),
                )  # fmt: skip
            if on_checkpoint is not None and every and self.step % every == 0:
                on_checkpoint(self)
        bar.close()
        return self.last_parts

    def state(self) -> TrainState:
        """The resumable state: models, optimizer, step and dead-latent counters."""
        model_state = {
            f"{i}.{name}": tensor
            for i, model in enumerate(self.models)
            for name, tensor in model.state_dict().items()
        }
        counters = {f"since_fired.{i}": c for i, c in enumerate(self.since_fired)}
        return TrainState(
            model=model_state,
            optimizer=self.optimizer.state_dict(),
            extra={"step": self.step, "tokens_seen": self.tokens_seen},
            tensors=counters,
        )

    def restore(self, state: TrainState) -> None:
        """Load a :meth:`state` (saved by this trainer's configuration) in place."""
        for i, model in enumerate(self.models):
            prefix = f"{i}."
            own = {k[len(prefix) :]: v for k, v in state.model.items() if k.startswith(prefix)}
            model.load_state_dict(own)
        self.optimizer.load_state_dict(state.optimizer)
        restore_layouts(self.optimizer)  # W_enc is stored transposed; the file holds it contiguous
        for i in range(len(self.models)):
            self.since_fired[i] = state.tensors[f"since_fired.{i}"].to(self.device)
        self.step = int(state.extra["step"])
        self.tokens_seen = int(state.extra.get("tokens_seen", 0))
        logger.info("resumed %s training at step %d", self.desc, self.step)
