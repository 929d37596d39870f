"""Sparse codes with a sparse backward: the pieces every architecture's loss is built from.

A sparse code of a batch is a list of selected (token, latent) pairs, ``rows`` [N] and
``cols`` [N] with ``rows`` sorted, and a value per pair. The loss of every architecture is
written on those pairs only:

- :class:`SelectedPre` gathers the encoder pre-activations of the pairs from the already
  computed dense ``pre`` [B, d_sae], and its backward touches only those pairs: grad
  ``W_enc`` = xcᵀ G and grad ``xc`` = G W_encᵀ with G sparse (N non-zeros), both embedding
  bags, instead of two dense [B, d_in] × [d_in, d_sae] products;
- :func:`decode_pairs` reconstructs [B, d_in] from the pairs as an embedding bag that reads
  only the N selected decoder rows (its backward is sparse too).

Only the forward pre-activation product stays dense, so a step costs one dense matmul
instead of five (Gao et al. 2024, appendix D, make the same observation for TopK). That pays
while codes are sparse; a ReLU or JumpReLU dictionary starts with about half its latents
active, so above :data:`DENSE_ABOVE` of active pairs its loss takes the dense path
(:func:`use_dense`), which gives the same loss and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DENSE_ABOVE = 0.1  # share of active (token, latent) pairs above which dense products win


def row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Start of each row's pairs in sorted ``rows`` [N]: offsets [n_rows] (empty rows too)."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def decode_pairs(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    W_dec: torch.Tensor,  # noqa: N803 - SAELens's name
    n_rows: int,
) -> torch.Tensor:
    """Σ over a token's pairs of ``values · W_dec[col]``: [n_rows, d_in], without the bias.

    ``rows``/``cols``/``values`` [N] (``rows`` sorted), ``W_dec`` [d_sae, d_in].
    """
    offsets = row_offsets(rows, n_rows)
    return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=values)


def fired_latents(cols: torch.Tensor, values: torch.Tensor, d_sae: int) -> torch.Tensor:
    """Latents with a positive value in any pair: bool [d_sae]."""
    fired = torch.zeros(d_sae, dtype=torch.bool, device=cols.device)
    fired[cols[values.detach() > 0]] = True
    return fired


class SelectedPre(torch.autograd.Function):
    """``pre[rows, cols]`` of ``pre = xc @ W_enc + b_enc`` with a sparse backward.

    Inputs: ``xc`` [B, d_in] (centred normalised activations), ``W_enc`` [d_in, d_sae],
    ``b_enc`` [d_sae], ``rows``/``cols`` [N] (rows sorted), ``pre`` [B, d_sae] computed
    without grad. Output [N].
    """

    @staticmethod
    def forward(ctx, xc, W_enc, b_enc, rows, cols, pre):  # noqa: N803 - SAELens's name
        ctx.save_for_backward(xc, W_enc, rows, cols)
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad):
        xc, W_enc, rows, cols = ctx.saved_tensors  # noqa: N806
        n, d_sae = xc.shape[0], W_enc.shape[1]
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = decode_pairs(rows, cols, grad, W_enc.t().contiguous(), n)
        if ctx.needs_input_grad[1]:
            # Row c of grad W_encᵀ is Σ over the pairs of latent c of grad · xc[row]: the
            # decode of the pairs with the roles of rows and latents swapped, [d_sae, d_in],
            # returned as its transpose without a copy. The encoder is stored in that layout
            # (a transposed [d_sae, d_in] block, :class:`.model.Dictionary`), so autograd
            # accumulates the gradient as it is. A sparse COO product here cost as much as the
            # dense one, and two transposing copies (ours and autograd's) a third.
            by_col, order = cols.sort(stable=True)
            grad_w = decode_pairs(by_col, rows[order], grad[order], xc.detach(), d_sae).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, cols, grad)
        return grad_x, grad_w, grad_b, None, None, None


def selected_pre(
    xc: torch.Tensor,
    W_enc: torch.Tensor,  # noqa: N803
    b_enc: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    pre: torch.Tensor,
) -> torch.Tensor:
    """The pre-activations of the selected pairs [N], differentiable sparsely (see above)."""
    return SelectedPre.apply(xc, W_enc, b_enc, rows, cols, pre)


def mask_pairs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (rows, cols) [N] of the True entries of ``mask`` [B, d_sae], rows sorted."""
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


def topk_pairs(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) [B·k] of each token's ``k`` largest pre-activations [B, d_sae]."""
    indices = pre.topk(k, dim=-1, sorted=False).indices
    rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
    return rows, indices.reshape(-1)


def use_dense(mask: torch.Tensor) -> bool:
    """Whether the code with active pairs ``mask`` [B, d_sae] is better computed densely."""
    return bool(mask.sum() > DENSE_ABOVE * mask.numel())
