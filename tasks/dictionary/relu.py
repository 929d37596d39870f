"""ReLU + L1 dictionaries (Anthropic, "Circuits Updates", April 2024; Lindsey et al. 2024).

``f = ReLU(pre)`` with the loss ``mse + l1_coefficient · E[Σ_i f_i w_i]``, where w_i is the
latent's decoder norm summed over the models it writes into: ‖d_i‖ for an SAE, and
Σ_m ‖d_{i,m}‖ for a crosscoder, the penalty of Lindsey et al. that lets a latent drop one
model's decoder entirely. Decoder rows are free in training (the penalty already sees their
norm); the file holds them at unit norm (:meth:`Dictionary.fold_decoder_norms`), which
changes neither the outputs nor the penalty. SAELens calls this architecture ``standard``.
"""

from __future__ import annotations

import torch

from layerdrift.tasks.dictionary.model import Dictionary, Parts, register
from layerdrift.tasks.dictionary.sparse import (
    decode_pairs,
    fired_latents,
    mask_pairs,
    selected_pre,
    use_dense,
)


@register
class ReLU(Dictionary):
    """``f = ReLU(pre)``, L1 penalty weighted by per-model decoder norms."""

    name = "relu"
    saelens_architecture = "standard"
    hyperparameters = ("l1_coefficient",)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """ReLU: [B, d_sae]."""
        return pre.relu()

    def penalty_weights(self) -> torch.Tensor:
        """Per-latent L1 weight Σ_m ‖d_{i,m}‖: [d_sae] (differentiable)."""
        per_model = self.W_dec.view(self.d_sae, self.spec.n_models, self.spec.d_model)
        return per_model.norm(dim=2).sum(dim=1)

    def objective(
        self, xn: torch.Tensor, dead_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, Parts, torch.Tensor]:
        """MSE plus ``l1_coefficient`` · E[Σ_i f_i w_i], on the positive pairs (or densely)."""
        xc = xn - self.b_dec
        pre = torch.addmm(self.b_enc, xc, self.W_enc)
        mask = pre.detach() > 0
        weights = self.penalty_weights()
        if use_dense(mask):
            codes = pre.relu()
            recon = torch.addmm(self.b_dec, codes, self.W_dec)
            l1 = (codes * weights).sum() / len(xn)
            fired = mask.any(dim=0)
        else:
            rows, cols = mask_pairs(mask)
            values = selected_pre(xc, self.W_enc, self.b_enc, rows, cols, pre.detach())
            recon = decode_pairs(rows, cols, values, self.W_dec, len(xn)) + self.b_dec
            l1 = (values * weights[cols]).sum() / len(xn)
            fired = fired_latents(cols, values, self.d_sae)
        mse = (recon - xn).pow(2).mean()
        loss = mse + self.spec.l1_coefficient * l1
        l0 = float(mask.sum()) / len(xn)
        parts = {"mse": mse.item(), "l1": l1.item(), "l0": l0, "loss": loss.item()}
        return loss, parts, fired
