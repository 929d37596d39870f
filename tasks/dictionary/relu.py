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
from layerdrift.tasks.dictionary.sparse import decode_pairs, fired_latents, mask_pairs, selected_pre


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
        """MSE plus ``l1_coefficient`` · E[Σ_i f_i w_i], on the positive pairs."""
        xc = xn - self.b_dec
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, xc, self.W_enc)
            rows, cols = mask_pairs(pre > 0)
        values = selected_pre(xc, self.W_enc, self.b_enc, rows, cols, pre)
        recon = decode_pairs(rows, cols, values, self.W_dec, len(xn)) + self.b_dec
        mse = (recon - xn).pow(2).mean()
        l1 = (values * self.penalty_weights()[cols]).sum() / len(xn)
        loss = mse + self.spec.l1_coefficient * l1
        parts = {"mse": mse.item(), "l1": l1.item(), "l0": len(rows) / len(xn), "loss": loss.item()}
        return loss, parts, fired_latents(cols, values, self.d_sae)
