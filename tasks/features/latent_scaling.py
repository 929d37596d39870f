"""Latent Scaling (Minder et al. 2025): are the crosscoder's exclusive latents exclusive?

Minder, Dumas, Juang, Chughtai & Nanda, "Robustly identifying concepts introduced during
chat fine-tuning using crosscoders" (arXiv 2504.02922) show that the L1 crosscoder loss can
shrink one model's decoder of a latent that both models use to zero (Complete Shrinkage)
or split a shared concept into two one-sided latents (Latent Decoupling). Their check fits,
for latent j with decoder direction d_j and activation f_j, the scale β that best explains
a target y by least squares over tokens i:

    β_j = ⟨d_j, Σ_i f_j(x_i) y_i⟩ / (‖d_j‖² Σ_i f_j(x_i)²)

on each model, for two targets, and reads the ratio other model / own model:

- ν^ε (error): y is the model's reconstruction error with latent j's own contribution
  added back. A large ν^ε says the other model's activations hold the direction that its
  shrunk decoder no longer writes (Complete Shrinkage).
- ν^r (reconstruction): y is the other model's reconstruction without latent j, against
  the own model's full reconstruction. A large ν^r says other latents rebuild the
  direction in the other model (Latent Decoupling).

Here d_j is the latent's decoder row for the model it belongs to (``base_only``: base,
``finetuned_only``: fine-tuned), in raw activation units, and the sums run over held-out
tokens. A latent *survives* when both ratios are below ``features.scaling_ratio_below``
(the threshold is layerdrift's; the paper reads the ratios' distributions).
"""

from __future__ import annotations

import numpy as np
import torch

from layerdrift.config import FeaturesConfig
from layerdrift.tasks.dictionary import Dictionary
from layerdrift.tasks.features.crosscoder import GROUPS, classify_latents, relative_norms

# Exclusive crosscoder groups and the model (0 base, 1 fine-tuned) their latents belong to.
OWNER = {"base_only": 0, "finetuned_only": 1}
SCALING_BATCH = 4096


@torch.no_grad()
def scaling_ratios(
    model: Dictionary, x: torch.Tensor, latents: np.ndarray, owners: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ν^ε and ν^r [k] of crosscoder ``latents`` [k] owned by model ``owners`` [k] (0, 1).

    ``x`` holds held-out pairs [n, 2, d_in] in raw units. A latent that never fires on
    ``x`` gets NaN.
    """
    k, latents = len(latents), torch.as_tensor(latents, dtype=torch.long)
    # Raw activation written per unit of code: decode() = (b + f·code_scale·W) / scale.
    unit = model.decoder_directions()[latents] * model.code_scale / model.scale[None, :, None]
    unit = unit.double()  # [k, 2, d]
    sq = torch.zeros(k, dtype=torch.float64)  # Σ f²
    fx = torch.zeros_like(unit)  # Σ f · x per model
    fxhat = torch.zeros_like(unit)  # Σ f · x̂ per model
    for start in range(0, len(x), SCALING_BATCH):
        batch = x[start : start + SCALING_BATCH].to(model.b_dec.device)
        codes = model.encode(batch)
        f = codes[:, latents].double().cpu()  # [n, k]
        sq += (f * f).sum(dim=0)
        fx += torch.einsum("nk,nmd->kmd", f, batch.double().cpu())
        fxhat += torch.einsum("nk,nmd->kmd", f, model.decode(codes).double().cpu())
    own = torch.as_tensor(owners, dtype=torch.long)
    other, rows = 1 - own, torch.arange(k)
    direction = unit[rows, own]  # [k, d]
    own_part = sq[:, None, None] * unit  # Σ f² · latent j's contribution, per model
    eps = fx - fxhat + own_part  # Σ f · (error with j added back)
    recon = fxhat.clone()
    recon[rows, other] -= own_part[rows, other]  # the other model without j

    def beta(sums: torch.Tensor, model_index: torch.Tensor) -> torch.Tensor:
        dot = (direction * sums[rows, model_index]).sum(dim=1)
        return dot / (direction.pow(2).sum(dim=1) * sq)

    with np.errstate(invalid="ignore", divide="ignore"):
        nu_eps = (beta(eps, other) / beta(eps, own)).numpy()
        nu_recon = (beta(recon, other) / beta(recon, own)).numpy()
    return nu_eps, nu_recon


def exclusive_latents(
    model: Dictionary, x: torch.Tensor, base_only_below: float, finetuned_only_above: float
) -> tuple[np.ndarray, np.ndarray]:
    """The crosscoder's exclusive latents that fire on ``x`` [n, 2, d_in] (as the comparison
    counts them: relative decoder norm beyond a threshold, live) [k], and each one's owner
    (0 base, 1 fine-tuned) [k]."""
    rel = relative_norms(np.linalg.norm(model.decoder_directions().cpu().numpy(), axis=2))
    groups = classify_latents(rel, base_only_below, finetuned_only_above)
    live = np.zeros(model.d_sae, dtype=bool)
    with torch.no_grad():
        for start in range(0, len(x), SCALING_BATCH):
            codes = model.encode(x[start : start + SCALING_BATCH].to(model.b_dec.device))
            live |= (codes > 0).any(dim=0).cpu().numpy()
    latents, owners = [], []
    for name, owner in OWNER.items():
        chosen = np.flatnonzero((groups == GROUPS.index(name)) & live)
        latents.append(chosen)
        owners.append(np.full(len(chosen), owner))
    return np.concatenate(latents), np.concatenate(owners)


def surviving_counts(model: Dictionary, x: torch.Tensor, fcfg: FeaturesConfig) -> dict[str, int]:
    """Live exclusive latents per group (``base_only``, ``finetuned_only``) of crosscoder
    ``model`` whose ν^ε and ν^r on held-out pairs ``x`` [n, 2, d_in] are both below
    ``fcfg.scaling_ratio_below``."""
    latents, owners = exclusive_latents(model, x, fcfg.base_only_below, fcfg.finetuned_only_above)
    if not len(latents):
        return dict.fromkeys(OWNER, 0)
    nu_eps, nu_recon = scaling_ratios(model, x, latents, owners)
    below = fcfg.scaling_ratio_below
    survives = (nu_eps < below) & (nu_recon < below)  # NaN (never fires) compares False
    return {name: int(survives[owners == owner].sum()) for name, owner in OWNER.items()}
