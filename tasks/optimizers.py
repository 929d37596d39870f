"""AdamW as the fine-tune uses it: fused where torch can.

torch's fused Adam(W) updates every parameter in one vectorised kernel instead of a chain
of tensor ops per parameter. On 2 cores, one AdamW step over the bundled model's 22.7M
parameters (mostly the 30,522 × 384 embedding matrix) took 16 ms fused against 100 ms for
the default single-tensor loop; over 76 fine-tuning steps of the quick preset that is 6 s.
The fused update rounds differently: after 20 steps on a 384 × 1536 matrix the two paths
differed by at most 2.4e-7 on weights of size up to 4.6 (float32 rounding). Each path is
deterministic, so a fine-tune and its resume still agree to the bit (tests/test_resume.py).

The dictionaries keep torch's default Adam. With the fused one, an SAE whose training was
killed and resumed came out different from the uninterrupted one (tests/test_resume.py):
its encoder is stored transposed (``W_enc`` is ``W_decᵀ``, strides (1, 384)), a training
state saved through safetensors comes back contiguous, and the fused kernel walks a
parameter, its gradient and its moments as flat memory, so each element was updated with
another element's moments. :func:`restore_layouts` gives restored moments their
parameter's layout; the dictionaries' trainer calls it on every resume. With that fixed,
fused Adam is still not faster for them: the quick preset's 196 SAE steps (layer 3, batch
256) took 2.88 s with the default Adam and 3.03 s fused, its 78 crosscoder steps 2.85 s and
2.97 s (medians of 3, interleaved in one process, load 0.9-1.7).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused Adam kernels take every one of ``params``: floating point, on
    a CPU or CUDA device."""
    return all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)


def adamw(params: list, lr: float) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` (tensors or parameter groups, as torch takes
    them), fused when :func:`fused_supported`."""
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    return torch.optim.AdamW(params, lr=lr, fused=True if fused_supported(tensors) else None)


def restore_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor of ``optimizer`` (Adam's moments, say) the
    memory layout of its parameter, after ``load_state_dict`` of a state that was saved
    contiguous. Values are unchanged; the fused kernels need matching layouts."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
