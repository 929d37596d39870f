"""Sparse codes with a sparse backward: the pieces every architecture's loss is built from.

A sparse code of a batch is a list of selected (token, latent) pairs, ``rows`` [N] and
``cols`` [N] with ``rows`` sorted, and a value per pair. The loss of every architecture is
written on those pairs only:

- :class:`SelectedPre` gathers the encoder pre-activations of the pairs from the already
  computed dense ``pre`` [B, d_sae], and its backward touches only those pairs: grad
  ``W_enc`` = xcᵀ G and grad ``xc`` = G W_encᵀ with G sparse (N non-zeros), both embedding
  bags, instead of two dense [B, d_in] × [d_in, d_sae] products;
- :func:`decode_pairs` reconstructs [B, d_in] from the pairs as an embedding bag that reads
  only the N selected decoder rows (its backward is sparse too);
- :class:`LatentOrder` regroups the pairs by latent once per step: the encoder's gradient
  and, through :func:`decode_trained`, the decoder's are embedding bags over latents that
  share it (torch's own embedding-bag backward sorts the pairs again for the decoder).

Only the forward pre-activation product stays dense, so a step costs one dense matmul
instead of five (Gao et al. 2024, appendix D, make the same observation for TopK). That pays
while codes are sparse; a ReLU or JumpReLU dictionary starts with about half its latents
active, so above :data:`DENSE_ABOVE` of active pairs its loss takes the dense path
(:func:`use_dense`), which gives the same loss and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Share of active (token, latent) pairs above which dense products win. Measured on 2 CPU
# threads (a JumpReLU SAE 384 -> 1536 at batch 1024, median step of two whole trainings, one
# on each path): sparse 59 ms against dense 82 at 10-15% of pairs, 79 against 92 at 15-30%,
# 153 against 96 above 30%.
DENSE_ABOVE = 0.2


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


class LatentOrder:
    """The pairs regrouped by latent (a stable sort of ``cols``), made on first use.

    :meth:`sorted` gives ``cols`` [N] sorted, the pairs' tokens ``rows`` [N] in that order
    and the permutation ``order`` [N] (a pair's value ``v`` [N] in row order is ``v[order]``
    in latent order). Both the encoder's and the decoder's gradients are sums over each
    latent's pairs, so one sort per step serves them both; it is lazy so that a loss
    evaluated without a backward pays nothing for it.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.rows, self.cols = rows, cols  # row order, as selected
        self._sorted: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def sorted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cols, rows, order) [N] each, sorted by latent, ties in token order."""
        if self._sorted is None:
            by_col, order = self.cols.sort(stable=True)
            self._sorted = (by_col, self.rows[order], order)
        return self._sorted

    def sum_by_latent(self, weights: torch.Tensor, table: torch.Tensor, d_sae: int) -> torch.Tensor:
        """Σ over each latent's pairs of ``weights · table[row]``: [d_sae, d_table].

        ``weights`` [N] in row order, ``table`` [B, d_table].
        """
        by_col, rows, order = self.sorted()
        return decode_pairs(by_col, rows, weights[order], table, d_sae)


class SelectedPre(torch.autograd.Function):
    """``pre[rows, cols]`` of ``pre = xc @ W_enc + b_enc`` with a sparse backward.

    Inputs: ``xc`` [B, d_in] (centred normalised activations), ``W_enc`` [d_in, d_sae],
    ``b_enc`` [d_sae], ``rows``/``cols`` [N] (rows sorted), ``pre`` [B, d_sae] computed
    without grad, ``by_latent`` the pairs' :class:`LatentOrder`. Output [N].
    """

    @staticmethod
    def forward(ctx, xc, W_enc, b_enc, rows, cols, pre, by_latent):  # noqa: N803
        ctx.save_for_backward(xc, W_enc, rows, cols)
        ctx.by_latent = by_latent
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
            grad_w = ctx.by_latent.sum_by_latent(grad, xc.detach(), d_sae).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, cols, grad)
        return grad_x, grad_w, grad_b, None, None, None, None


def selected_pre(
    xc: torch.Tensor,
    W_enc: torch.Tensor,  # noqa: N803
    b_enc: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    pre: torch.Tensor,
    by_latent: LatentOrder | None = None,
) -> torch.Tensor:
    """The pre-activations of the selected pairs [N], differentiable sparsely (see above).

    ``by_latent``: the pairs' :class:`LatentOrder`, shared with :func:`decode_trained`
    (default: one of its own).
    """
    order = LatentOrder(rows, cols) if by_latent is None else by_latent
    return SelectedPre.apply(xc, W_enc, b_enc, rows, cols, pre, order)


class _DecoderGradient(torch.autograd.Function):
    """Identity on a reconstruction [B, d_in] whose backward also gives ``W_dec`` its gradient.

    Row c of grad ``W_dec`` [d_sae, d_in] is Σ over latent c's pairs of value · grad[row]:
    an embedding bag over the :class:`LatentOrder` the encoder's gradient sorted already.
    """

    @staticmethod
    def forward(ctx, recon, W_dec, values, by_latent):  # noqa: N803 - SAELens's name
        ctx.save_for_backward(values)
        ctx.by_latent, ctx.d_sae = by_latent, W_dec.shape[0]
        return recon.view_as(recon)

    @staticmethod
    def backward(ctx, grad):
        (values,) = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = ctx.by_latent.sum_by_latent(values, grad.contiguous(), ctx.d_sae)
        return grad, grad_w, None, None


def decode_trained(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    W_dec: torch.Tensor,  # noqa: N803 - SAELens's name
    n_rows: int,
    by_latent: LatentOrder,
) -> torch.Tensor:
    """:func:`decode_pairs` [n_rows, d_in] for the loss, its decoder gradient by latent.

    torch's embedding bag gives ``values`` [N] their gradient, the per-pair dot products;
    ``W_dec`` [d_sae, d_in] gets its own from :class:`_DecoderGradient`, which reuses the
    pairs' ``by_latent`` order instead of the sort inside torch's embedding-bag backward.
    """
    recon = decode_pairs(rows, cols, values, W_dec.detach(), n_rows)
    return _DecoderGradient.apply(recon, W_dec, values.detach(), by_latent)


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
