"""JumpReLU dictionaries (Rajamanoharan et al. 2024, "Jumping Ahead").

Each latent has a threshold θ_i ≥ 0: ``f_i = pre_i · H(pre_i − θ_i)``. The loss is

    mse + l0_coefficient · E[‖f‖₀] / d_in

the paper's ‖x − x̂‖² + λ‖f‖₀ divided by d_in, since the reconstruction term here is the
mean over the d_in elements (E‖xn‖² = d_in); Adam does not see that constant factor, so
``l0_coefficient`` is the paper's λ (and SAELens's ``l0_coefficient``).

‖f‖₀ has no gradient and the jump none with respect to θ, so θ learns through the paper's
straight-through estimator with a rectangle kernel K(u) = 1[|u| < ½] of width ε
(``bandwidth``):

    ∂f_i/∂θ_i := −(θ_i / ε) K((pre_i − θ_i) / ε),   ∂H(pre_i − θ_i)/∂θ_i := −(1/ε) K(...)

while ∂f_i/∂pre_i = H(pre_i − θ_i) as usual. Only pairs with pre > θ − ε/2 (the active ones
and those inside the kernel's window) carry any gradient, so the loss is written on those
pairs (:mod:`.sparse`; densely while many latents are active). As in SAELens, θ is a
parameter in its own right, kept ≥ 0 after every step, and decoder rows are free (the L0
penalty does not see their norm); the file holds them at unit norm
(:meth:`Dictionary.fold_decoder_norms`).

As SAELens does, the gradient is clipped to norm 1 on the paper's scale (the loss times
d_in, :attr:`Dictionary.max_grad_norm`). Adam's second moment (β₂ = 0.999) remembers about
a thousand steps, and the first steps, while most latents still fire, carry the largest
gradients (on the default run's layer 6 the norm falls from about 1,000 to 70 over the
first 200 steps): unclipped, they hold the step size down for the rest of a run, and at
equal L0 the reconstruction was worse than SAELens's (FVU 0.120 against 0.103,
``benchmarks/sae.py``). The norm stays above 1, so every step is in effect normalised.
"""

from __future__ import annotations

import torch
from torch import nn

from layerdrift.tasks.dictionary.model import Dictionary, DictionarySpec, Parts, register
from layerdrift.tasks.dictionary.sparse import (
    LatentOrder,
    decode_trained,
    fired_latents,
    mask_pairs,
    selected_pre,
    use_dense,
)


def _window(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel K(u) = 1[|u| < ½]."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpFn(torch.autograd.Function):
    """``v · H(v − θ)`` with the straight-through gradient for θ ([N] each)."""

    @staticmethod
    def forward(ctx, v, theta, bandwidth: float):
        ctx.save_for_backward(v, theta)
        ctx.bandwidth = bandwidth
        return v * (v > theta)

    @staticmethod
    def backward(ctx, grad):
        v, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(theta / eps) * _window((v - theta) / eps) * grad
        return grad * (v > theta), grad_theta, None


class StepFn(torch.autograd.Function):
    """``H(v − θ)`` with the straight-through gradient for θ (none for v)."""

    @staticmethod
    def forward(ctx, v, theta, bandwidth: float):
        ctx.save_for_backward(v, theta)
        ctx.bandwidth = bandwidth
        return (v > theta).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        v, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        return None, -(1.0 / eps) * _window((v - theta) / eps) * grad, None


@register
class JumpReLU(Dictionary):
    """Per-latent thresholds trained with a straight-through estimator, L0 penalty.

    Parameter ``threshold`` [d_sae] (normalised units).
    """

    name = "jumprelu"
    saelens_architecture = "jumprelu"
    max_grad_norm = 1.0
    hyperparameters = ("l0_coefficient", "bandwidth", "init_threshold")

    def __init__(self, spec: DictionarySpec, generator: torch.Generator | None = None) -> None:
        super().__init__(spec, generator)
        self.threshold = nn.Parameter(torch.full((spec.d_sae,), float(spec.init_threshold)))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """``pre · 1[pre > θ]``: [B, d_sae]."""
        return pre * (pre > self.threshold)

    def objective(
        self, xn: torch.Tensor, dead_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, Parts, torch.Tensor]:
        """MSE plus ``l0_coefficient`` · E[L0] / d_in, on the pairs with pre > θ − ε/2 (or
        densely while many latents are active)."""
        eps = self.spec.bandwidth
        xc = xn - self.b_dec
        pre = torch.addmm(self.b_enc, xc, self.W_enc)
        mask = pre.detach() > self.threshold.detach() - eps / 2
        if use_dense(mask):
            theta = self.threshold.expand_as(pre)
            codes = JumpFn.apply(pre, theta, eps)
            recon = torch.addmm(self.b_dec, codes, self.W_dec)
            l0 = StepFn.apply(pre.detach(), theta, eps).sum() / len(xn)
            fired = (codes.detach() > 0).any(dim=0)
        else:
            rows, cols = mask_pairs(mask)
            by_latent = LatentOrder(rows, cols)  # one sort for both weights' gradients
            values = selected_pre(xc, self.W_enc, self.b_enc, rows, cols, pre.detach(), by_latent)
            theta = self.threshold[cols]
            codes = JumpFn.apply(values, theta, eps)
            recon = decode_trained(rows, cols, codes, self.W_dec, len(xn), by_latent)
            recon = recon + self.b_dec
            l0 = StepFn.apply(values.detach(), theta, eps).sum() / len(xn)
            fired = fired_latents(cols, codes, self.d_sae)
        mse = (recon - xn).pow(2).mean()
        loss = mse + self.spec.l0_coefficient * l0 / self.spec.d_in
        parts = {"mse": mse.item(), "l0": l0.item(), "loss": loss.item()}
        return loss, parts, fired

    @torch.no_grad()
    def after_step(self) -> None:
        """Keep every threshold ≥ 0 (below 0 the gate would pass negative codes)."""
        self.threshold.clamp_(min=0.0)

    def latent_tensors(self) -> dict[str, torch.Tensor]:
        """The thresholds, SAELens's ``threshold``."""
        return {"threshold": self.threshold}

    def load_latent_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Read back ``threshold`` [d_sae]."""
        with torch.no_grad():
            self.threshold.copy_(tensors["threshold"])

    def rescale_latents(self, factor: torch.Tensor) -> None:
        """Latent codes times ``factor``; the thresholds follow them."""
        super().rescale_latents(factor)
        with torch.no_grad():
            self.threshold.mul_(factor)
