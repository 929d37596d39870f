"""A crosscoder: one sparse dictionary over the paired activations of two models.

The same token's activations in the base and the fine-tuned model, ``x`` [batch, 2, d_in],
are encoded together into one sparse code ``f`` [batch, d_sae]; each model has its own
decoder (Lindsey et al. 2024, "Sparse Crosscoders"; Minder et al. 2025 for the
base-vs-fine-tuned use). A latent whose fine-tuned decoder row is (nearly) zero exists only
in the base model, and the reverse; the relative decoder norm

    r = ||d_ft|| / (||d_base|| + ||d_ft||)

sorts latents into base-only (r small), shared and fine-tuned-only (r large).

TopK variant: pre-encoder bias, ReLU then top-k, the decoder of each latent kept at unit
joint norm sqrt(||d_base||^2 + ||d_ft||^2) = 1, which leaves the ratio free. ReLU variant:
L1 penalty on f_i * (||d_base,i|| + ||d_ft,i||), the crosscoder loss of Lindsey et al.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from layerdrift.storage.saes import files_complete, load_weight_files, save_weight_files
from layerdrift.tasks.sae.model import topk_objective

WEIGHTS_FILENAME = "crosscoder_weights.safetensors"
GROUPS = ("base_only", "shared", "finetuned_only")
AUX_COEFFICIENT = 1 / 32


@dataclass(frozen=True)
class CrosscoderCfg:
    """What a saved crosscoder needs to be rebuilt (written as ``cfg.json``)."""

    d_in: int
    d_sae: int
    architecture: Literal["topk", "relu"] = "topk"
    k: int = 32
    l1_coefficient: float = 1e-3
    checkpoints: tuple[str, ...] = ("base", "final")
    layer: int = 0
    seed: int = 0
    store_generation: str = ""  # generation id of the store it was trained on

    @property
    def n_models(self) -> int:
        """How many models share the dictionary (2 here)."""
        return len(self.checkpoints)


class Crosscoder(nn.Module):
    """Shared-code crosscoder over ``n_models`` activation spaces of width ``d_in``.

    Parameters: ``W_enc`` [n_models, d_in, d_sae], ``b_enc`` [d_sae], ``W_dec``
    [d_sae, n_models, d_in], ``b_dec`` [n_models, d_in]; buffer ``scale`` [n_models], the
    factor that brings each model's activations to mean squared norm ``d_in``.
    """

    def __init__(self, cfg: CrosscoderCfg, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        m, d, s = cfg.n_models, cfg.d_in, cfg.d_sae
        W_dec = torch.randn(s, m, d, generator=generator)
        W_dec /= W_dec.flatten(1).norm(dim=1)[:, None, None]
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.permute(1, 2, 0).clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(s))
        self.b_dec = nn.Parameter(torch.zeros(m, d))
        self.register_buffer("scale", torch.ones(m))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations of raw activations ``x`` [B, n_models, d_in]: [B, d_sae]."""
        x = x * self.scale[None, :, None] - self.b_dec
        return torch.einsum("bmi,mis->bs", x, self.W_enc) + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse code of ``x`` [B, n_models, d_in]: [B, d_sae] (non-negative)."""
        pre = torch.relu(self.pre_activations(x))
        if self.cfg.architecture == "relu":
            return pre
        top = pre.topk(min(self.cfg.k, pre.shape[1]), dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, top.values)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, n_models, d_in] of code ``f`` [B, d_sae], in raw units."""
        x_hat = torch.einsum("bs,smi->bmi", f, self.W_dec) + self.b_dec
        return x_hat / self.scale[None, :, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: [B, n_models, d_in]."""
        return self.decode(self.encode(x))

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.cfg.d_sae

    def decoder_norms(self) -> torch.Tensor:
        """Norm of each latent's decoder row in each model: [d_sae, n_models]."""
        return self.W_dec.detach().norm(dim=2)

    @torch.no_grad()
    def init_from_sample(self, x: torch.Tensor) -> None:
        """Set ``scale`` (E||x_m·scale_m||² = d_in per model) and ``b_dec`` from x [n, M, d_in]."""
        x = x.to(self.b_dec.device, torch.float64)
        mean_sq = x.pow(2).sum(dim=2).mean(dim=0).clamp_min(1e-12)
        self.scale.copy_((self.cfg.d_in / mean_sq).sqrt().float())
        self.b_dec.copy_((x * self.scale.double()[None, :, None]).mean(dim=0).float())

    def loss(
        self, x: torch.Tensor, dead_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Training loss on raw ``x`` [B, n_models, d_in], the trainer protocol of tasks.sae.

        Mean squared error per element of the normalised activations of both models; ReLU
        adds ``l1_coefficient * E[sum_i f_i (||d_base,i|| + ||d_ft,i||)]``; TopK adds the
        AuxK loss of the ``dead_mask`` [d_sae] latents on the residual (weight 1/32, Gao et
        al. 2024). Returns (loss, parts, fired [d_sae] bool).
        """
        xn = x * self.scale[None, :, None]
        m, d, s = self.cfg.n_models, self.cfg.d_in, self.d_sae
        if self.cfg.architecture == "topk":
            # The TopK crosscoder is a TopK SAE over the concatenated (normalised) models with
            # the decoder flattened to [d_sae, n_models * d_in]: the SAE's sparse backward.
            return topk_objective(
                xn.reshape(len(xn), m * d),
                self.b_dec.reshape(m * d),
                self.W_enc.reshape(m * d, s),
                self.b_enc,
                self.W_dec.reshape(s, m * d),
                self.cfg.k,
                min(d // 2, s),
                AUX_COEFFICIENT,
                dead_mask,
            )
        f = torch.relu(torch.einsum("bmi,mis->bs", xn - self.b_dec, self.W_enc) + self.b_enc)
        recon = torch.einsum("bs,smi->bmi", f, self.W_dec) + self.b_dec
        mse = (recon - xn).pow(2).mean()
        l1 = (f * self.W_dec.norm(dim=2).sum(dim=1)).sum(dim=1).mean()
        loss = mse + self.cfg.l1_coefficient * l1
        active = f > 0
        l0 = active.sum(dim=1).float().mean().item()
        parts = {"mse": mse.item(), "l1": l1.item(), "l0": l0, "loss": loss.item()}
        return loss, parts, active.any(dim=0)

    @torch.no_grad()
    def after_backward(self) -> None:
        """TopK: drop the gradient component parallel to each latent's joint decoder row."""
        if self.cfg.architecture == "topk" and self.W_dec.grad is not None:
            w, g = self.W_dec.flatten(1), self.W_dec.grad.view(self.d_sae, -1)
            g -= (g * w).sum(dim=1, keepdim=True) * w

    @torch.no_grad()
    def after_step(self) -> None:
        """TopK: rescale each latent's decoder to unit joint norm (the ratio stays free)."""
        if self.cfg.architecture == "topk":
            norms = self.W_dec.flatten(1).norm(dim=1).clamp_min(1e-12)
            self.W_dec /= norms[:, None, None]


def relative_norms(decoder_norms: np.ndarray) -> np.ndarray:
    """``||d_ft|| / (||d_base|| + ||d_ft||)`` from norms [d_sae, 2]: [d_sae] (0.5 if both 0)."""
    norms = np.asarray(decoder_norms, dtype=np.float64)
    total = norms.sum(axis=1)
    return np.where(total > 0, norms[:, 1] / np.where(total > 0, total, 1.0), 0.5)


def classify_latents(rel_norm: np.ndarray, base_only_below: float, ft_only_above: float):
    """Group index per latent (0 base-only, 1 shared, 2 fine-tuned-only): [d_sae] int."""
    rel_norm = np.asarray(rel_norm)
    groups = np.ones(rel_norm.shape, dtype=np.int64)
    groups[rel_norm < base_only_below] = 0
    groups[rel_norm > ft_only_above] = 2
    return groups


def crosscoder_exists(url: str) -> bool:
    """Whether folder ``url`` holds a complete crosscoder (weights, then ``cfg.json``)."""
    return files_complete(url, WEIGHTS_FILENAME)


def save_crosscoder(model: Crosscoder, url: str) -> None:
    """Write the safetensors weights of ``model``, then ``cfg.json``, into folder ``url``."""
    cfg = asdict(model.cfg) | {"n_models": model.cfg.n_models}
    save_weight_files(url, cfg, model.state_dict(), WEIGHTS_FILENAME)


def load_crosscoder(url: str, device: str | torch.device = "cpu") -> Crosscoder:
    """Rebuild the crosscoder saved by :func:`save_crosscoder` in folder ``url``."""
    hint = "train it first (the features stage of this layer)"
    raw, tensors = load_weight_files(url, WEIGHTS_FILENAME, hint)
    raw.pop("n_models", None)
    raw["checkpoints"] = tuple(raw["checkpoints"])
    model = Crosscoder(CrosscoderCfg(**raw))
    model.load_state_dict(tensors)
    return model.to(device)


__all__ = [
    "GROUPS",
    "Crosscoder",
    "CrosscoderCfg",
    "classify_latents",
    "crosscoder_exists",
    "load_crosscoder",
    "relative_norms",
    "save_crosscoder",
]
