"""TopK (Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) dictionaries.

- TopK: ``f = ReLU(TopK_k(pre))`` per token.
- BatchTopK: in training, the ``k · B`` largest positive pre-activations of the whole batch
  of B tokens (so a token may use more or fewer than k latents); at inference, a global
  threshold θ: ``f = pre · 1[pre > θ]``, with θ the running average (rate 0.01, as SAELens)
  of the smallest value the batch selection kept. SAELens saves it as a JumpReLU SAE with
  every threshold equal to θ, and so does :mod:`.files`.

Both keep decoder rows at unit norm (the gradient component parallel to each row is removed
before the step and rows are renormalised after it) and add the AuxK loss (weight
``aux_coefficient``, 1/32 by default): the top ``k_aux = d_in / 2`` dead latents
reconstruct the residual of the live ones, scored as a normalised MSE (Gao et al. 2024,
appendix A.2).
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from layerdrift.tasks.dictionary.model import Dictionary, DictionarySpec, Parts, register
from layerdrift.tasks.dictionary.sparse import (
    decode_pairs,
    fired_latents,
    selected_pre,
    topk_pairs,
)

THRESHOLD_RATE = 0.01  # BatchTopK's running-average rate for θ (SAELens's topk_threshold_lr)


def aux_k_loss(
    model: Dictionary,
    xc: torch.Tensor,
    pre: torch.Tensor,
    residual: torch.Tensor,
    dead_mask: torch.Tensor | None,
) -> torch.Tensor:
    """AuxK: the top ``k_aux`` dead latents of each token reconstruct ``residual`` [B, d_in].

    ``xc`` [B, d_in] is the centred normalised input and ``pre`` [B, d_sae] its
    pre-activations. Returns the normalised MSE (0 when no latent is dead).
    """
    dead = dead_mask.nonzero().squeeze(1) if dead_mask is not None else None
    if dead is None or dead.numel() == 0:
        return pre.new_zeros(())
    k_aux = min(model.spec.d_in // 2, dead.numel())
    with torch.no_grad():
        rows, dead_cols = topk_pairs(pre[:, dead], k_aux)
        cols = dead[dead_cols]
    values = selected_pre(xc, model.W_enc, model.b_enc, rows, cols, pre).relu()
    recon = decode_pairs(rows, cols, values, model.W_dec, len(xc))
    return (recon - residual).pow(2).mean() / residual.pow(2).mean().clamp_min(1e-12)


class _SelectedK(Dictionary):
    """The loss shared by TopK and BatchTopK: reconstruct from chosen pairs, plus AuxK."""

    unit_norm_decoder = True
    hyperparameters = ("k", "aux_coefficient")

    @property
    def k(self) -> int:
        """Active latents per token (on average, for BatchTopK)."""
        return min(self.spec.k, self.spec.d_sae)

    @abstractmethod
    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (rows, cols) pairs that make up the training code of ``pre`` [B, d_sae]."""

    def after_selection(self, values: torch.Tensor) -> None:
        """Hook run on the selected values [N] of each training step."""

    def objective(
        self, xn: torch.Tensor, dead_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, Parts, torch.Tensor]:
        """MSE of the reconstruction from the selected pairs plus ``aux_coefficient``·AuxK."""
        xc = xn - self.b_dec
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, xc, self.W_enc)
            rows, cols = self.select(pre)
        values = selected_pre(xc, self.W_enc, self.b_enc, rows, cols, pre).relu()
        recon = decode_pairs(rows, cols, values, self.W_dec, len(xn)) + self.b_dec
        mse = (recon - xn).pow(2).mean()
        aux = aux_k_loss(self, xc, pre, (xn - recon).detach(), dead_mask)
        loss = mse + self.spec.aux_coefficient * aux
        with torch.no_grad():
            self.after_selection(values)
        l0 = float((values > 0).sum()) / len(xn)
        parts = {"mse": mse.item(), "aux": aux.item(), "l0": l0, "loss": loss.item()}
        return loss, parts, fired_latents(cols, values, self.d_sae)


@register
class TopK(_SelectedK):
    """``f = ReLU(TopK_k(pre))`` per token."""

    name = "topk"
    saelens_architecture = "topk"

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's ``k`` largest pre-activations."""
        return topk_pairs(pre, self.k)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """TopK then ReLU: [B, d_sae]."""
        top = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())


@register
class BatchTopK(_SelectedK):
    """The ``k · B`` largest positive pre-activations of a batch; a threshold at inference.

    Buffer ``threshold`` [d_sae] (every entry θ, normalised units).
    """

    name = "batchtopk"
    saelens_architecture = "jumprelu"

    def __init__(self, spec: DictionarySpec, generator: torch.Generator | None = None) -> None:
        super().__init__(spec, generator)
        self.register_buffer("threshold", torch.zeros(spec.d_sae))

    def select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's ``k · B`` largest positive pre-activations, rows sorted."""
        values, flat = pre.flatten().topk(self.k * len(pre), sorted=False)
        flat = flat[values > 0].sort().values
        return flat // self.d_sae, flat % self.d_sae

    def after_selection(self, values: torch.Tensor) -> None:
        """Move θ towards the smallest value the batch selection kept."""
        kept = values[values > 0]
        if kept.numel():
            self.threshold.mul_(1 - THRESHOLD_RATE).add_(THRESHOLD_RATE * kept.min())

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """``pre · 1[pre > θ]`` (θ ≥ 0): [B, d_sae]."""
        return pre * (pre > self.threshold)

    def latent_tensors(self) -> dict[str, torch.Tensor]:
        """The inference threshold, written as SAELens's JumpReLU ``threshold``."""
        return {"threshold": self.threshold}

    def load_latent_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Read back the ``threshold`` [d_sae]."""
        self.threshold.copy_(tensors["threshold"])

    def rescale_latents(self, factor: torch.Tensor) -> None:
        """Latent codes times ``factor``; the threshold follows them."""
        super().rescale_latents(factor)
        self.threshold.mul_(factor)
