"""Sparse autoencoders: TopK (Gao et al. 2024) and ReLU + L1 (Anthropic, April 2024 update).

Shapes: ``x`` [batch, d_in] raw activations, ``f`` [batch, d_sae] latent code. Inside, the
SAE works on normalised activations ``x * scale`` (``scale`` is chosen so that
E||x * scale||² = d_in, estimated from a sample of the store); ``decode`` divides by
``scale`` again, so inputs and reconstructions are always in the model's own units.

- TopK: ``f = ReLU(TopK_k((x̂ - b_dec) W_enc + b_enc))`` with x̂ = x * scale; the decoder
  rows are kept at unit norm (the gradient component parallel to each row is removed before
  the step and rows are renormalised after it); the AuxK loss (k_aux = d_in / 2, weight
  1/32) lets dead latents reconstruct the residual.
- ReLU: ``f = ReLU((x̂ - b_dec) W_enc + b_enc)`` with the loss
  ``mse + λ · E[Σ_i f_i ||W_dec[i]||]``: the L1 penalty weighted by decoder row norms.

The training loss uses the mean squared error per element of the normalised activations.
Every model offers what :mod:`tasks.sae.train` needs: ``loss(x, dead_mask)``,
``after_backward()``, ``after_step()`` and ``d_sae``, so other dictionaries (crosscoders)
can reuse the trainer by offering the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SAESpec:
    """Shape, architecture, loss weights and provenance of one SAE."""

    d_in: int
    d_sae: int
    architecture: Literal["topk", "relu"] = "topk"
    k: int = 32
    l1_coefficient: float = 1e-3
    aux_k: int | None = None  # None: d_in // 2 (Gao et al. 2024)
    aux_coefficient: float = 1 / 32
    model_name: str = ""
    checkpoint: str = ""
    layer: int = 0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "relu"):
            raise ValueError(f"architecture must be 'topk' or 'relu', got {self.architecture!r}")
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k={self.k} must lie in 1..d_sae={self.d_sae}")

    @property
    def k_aux(self) -> int:
        """Latents used by the AuxK loss."""
        return min(self.aux_k if self.aux_k is not None else self.d_in // 2, self.d_sae)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


class SparseAutoencoder(nn.Module):
    """A TopK or ReLU+L1 SAE with SAELens's parameter names and shapes.

    Parameters: ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in],
    ``b_dec`` [d_in] (all in normalised units); buffer ``scale`` [] (the input factor).
    """

    def __init__(self, spec: SAESpec, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.spec = spec
        d_in, d_sae = spec.d_in, spec.d_sae
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())  # encoder = decoder transpose at init
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(()))

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.spec.d_sae

    @torch.no_grad()
    def init_from_sample(self, x: torch.Tensor) -> None:
        """Set ``scale`` (E||x·scale||² = d_in) and ``b_dec`` (the mean) from ``x`` [n, d_in]."""
        x = x.to(self.b_dec.device, torch.float64)
        mean_sq = x.pow(2).sum(dim=1).mean().clamp_min(1e-12)
        self.scale.fill_(float((self.spec.d_in / mean_sq).sqrt()))
        self.b_dec.copy_((x * self.scale.double()).mean(dim=0).float())

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations of raw ``x`` [B, d_in]: [B, d_sae]."""
        return torch.addmm(self.b_enc, x * self.scale - self.b_dec, self.W_enc)

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK code of raw ``x`` [B, d_in] as (values [B, k] ≥ 0, indices [B, k])."""
        values, indices = self.encode_pre(x).topk(self.spec.k, dim=-1, sorted=False)
        return values.relu(), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense sparse code of raw ``x`` [B, d_in]: [B, d_sae], non-negative."""
        if self.spec.architecture == "relu":
            return self.encode_pre(x).relu()
        values, indices = self.encode_sparse(x)
        return torch.zeros(x.shape[0], self.d_sae, dtype=values.dtype, device=x.device).scatter(
            1, indices, values
        )

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, d_in] in raw units of code ``f`` [B, d_sae]."""
        return torch.addmm(self.b_dec, f, self.W_dec) / self.scale

    def _decode_sparse_normalised(
        self, values: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        """Normalised reconstruction from a TopK code, gathering only the k active rows."""
        out = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")
        return out + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, d_in] of raw ``x`` [B, d_in] (equals ``decode(encode(x))``)."""
        if self.spec.architecture == "relu":
            return self.decode(self.encode(x))
        values, indices = self.encode_sparse(x)
        return self._decode_sparse_normalised(values, indices) / self.scale

    def loss(
        self, x: torch.Tensor, dead_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Training loss on raw ``x`` [B, d_in].

        ``dead_mask`` [d_sae] marks dead latents for the AuxK loss (TopK only). Returns
        (loss, parts {loss, mse, l0, aux or l1}, fired [d_sae] bool: latents active in ``x``).
        """
        xn = x * self.scale
        if self.spec.architecture == "topk":
            return topk_objective(
                xn,
                self.b_dec,
                self.W_enc,
                self.b_enc,
                self.W_dec,
                self.spec.k,
                self.spec.k_aux,
                self.spec.aux_coefficient,
                dead_mask,
            )
        f = torch.addmm(self.b_enc, xn - self.b_dec, self.W_enc).relu()
        recon = torch.addmm(self.b_dec, f, self.W_dec)
        mse = (recon - xn).pow(2).mean()
        l1 = (f * self.W_dec.norm(dim=1)).sum(dim=1).mean()
        loss = mse + self.spec.l1_coefficient * l1
        active = f > 0
        l0 = active.sum(1).float().mean().item()
        parts = {"mse": mse.item(), "l1": l1.item(), "l0": l0, "loss": loss.item()}
        return loss, parts, active.any(dim=0)

    @torch.no_grad()
    def after_backward(self) -> None:
        """TopK: drop the gradient component parallel to each (unit) decoder row."""
        if self.spec.architecture == "topk" and self.W_dec.grad is not None:
            w, g = self.W_dec, self.W_dec.grad
            g -= (g * w).sum(dim=1, keepdim=True) * w

    @torch.no_grad()
    def after_step(self) -> None:
        """TopK: renormalise decoder rows to unit norm."""
        if self.spec.architecture == "topk":
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def topk_objective(
    xn: torch.Tensor,
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,  # noqa: N803 - SAELens's name
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,  # noqa: N803
    k: int,
    k_aux: int,
    aux_coefficient: float,
    dead_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """TopK reconstruction loss plus AuxK, with sparse gradients, on normalised ``xn`` [B, d].

    ``W_enc`` [d, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d], ``b_dec`` [d]. The loss is
    the mean squared error per element plus ``aux_coefficient`` times the AuxK loss: the top
    ``k_aux`` of the ``dead_mask`` [d_sae] latents reconstruct the residual (normalised MSE,
    Gao et al. 2024). Only the B·k selected (token, latent) pairs enter the backward pass.
    Shared by SAEs and crosscoders (which pass their decoders flattened over models).
    Returns (loss, parts {mse, aux, l0, loss}, fired [d_sae] bool).
    """
    xc = xn - b_dec
    with torch.no_grad():
        pre = torch.addmm(b_enc, xc, W_enc)
        indices = pre.topk(k, dim=-1, sorted=False).indices
    values = _SelectedPre.apply(xc, W_enc, b_enc, indices, pre).relu()
    recon = F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum") + b_dec
    mse = (recon - xn).pow(2).mean()
    aux = _aux_loss(xc, pre, (xn - recon).detach(), W_enc, b_enc, W_dec, k_aux, dead_mask)
    loss = mse + aux_coefficient * aux
    positive = values.detach() > 0
    fired = torch.zeros(W_dec.shape[0], dtype=torch.bool, device=xn.device)
    fired[indices[positive]] = True
    l0 = positive.sum(dim=1).float().mean().item()
    parts = {"mse": mse.item(), "aux": aux.item(), "l0": l0, "loss": loss.item()}
    return loss, parts, fired


def _aux_loss(
    xc: torch.Tensor,
    pre: torch.Tensor,
    residual: torch.Tensor,
    W_enc: torch.Tensor,  # noqa: N803
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,  # noqa: N803
    k_aux: int,
    dead_mask: torch.Tensor | None,
) -> torch.Tensor:
    """AuxK: the top ``k_aux`` dead latents reconstruct the residual [B, d] (NMSE)."""
    dead = dead_mask.nonzero().squeeze(1) if dead_mask is not None else None
    if dead is None or dead.numel() == 0:
        return pre.new_zeros(())
    k_aux = min(k_aux, dead.numel())
    with torch.no_grad():
        indices = dead[pre[:, dead].topk(k_aux, dim=-1, sorted=False).indices]
    values = _SelectedPre.apply(xc, W_enc, b_enc, indices, pre).relu()
    recon = F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")
    return (recon - residual).pow(2).mean() / residual.pow(2).mean().clamp_min(1e-12)


class _SelectedPre(torch.autograd.Function):
    """``pre[b, idx[b, j]]`` of ``pre = xc @ W_enc + b_enc`` with a sparse backward.

    Forward gathers from the already computed ``pre`` [B, d_sae]; backward touches only the
    selected (token, latent) pairs: grad W_enc = xcᵀ G with G sparse (B·k non-zeros), grad
    xc = G W_encᵀ as an embedding bag, instead of two dense [B, d_in] × [d_in, d_sae] products.
    """

    @staticmethod
    def forward(ctx, xc, W_enc, b_enc, indices, pre):  # noqa: N803 - SAELens's name
        ctx.save_for_backward(xc, W_enc, indices)
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx, grad):
        xc, W_enc, indices = ctx.saved_tensors  # noqa: N806
        n, k = indices.shape
        d_sae = W_enc.shape[1]
        flat, g = indices.reshape(-1), grad.reshape(-1).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(
                indices, W_enc.t().contiguous(), per_sample_weights=grad, mode="sum"
            )
        if ctx.needs_input_grad[1]:
            rows = torch.arange(n, device=xc.device).repeat_interleave(k)
            pairs = torch.stack([flat, rows])
            sparse = torch.sparse_coo_tensor(pairs, g, (d_sae, n), check_invariants=False)
            grad_w = torch.sparse.mm(sparse, xc.detach()).t().contiguous()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, flat, g)
        return grad_x, grad_w, grad_b, None, None
