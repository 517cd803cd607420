"""The native segment loss as a torch custom op (``natscale::segment_ce``) with autograd.

Gradient-in-forward: the extension returns d loss_sum / d hidden and d loss_sum / d weight with
the loss (token weights folded in), so backward only scales them by the incoming gradient. Neither
the logits nor ``weight`` are needed in backward, which suits ZeRO-3: the op runs inside the model
forward on the gathered lm_head and the weight gradient reaches ``weight`` through autograd.

The fake (shape-only) implementation lets the op run under ``torch.compile`` and FakeTensor
tracing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natscale.ops.builder import SEGMENT_CE_CPU, SEGMENT_CE_CUDA


def _extension(device: torch.device):
    builder = SEGMENT_CE_CUDA if device.type == "cuda" else SEGMENT_CE_CPU
    return builder.load()


@torch.library.custom_op("natscale::segment_ce", mutates_args=())
def segment_ce_op(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    token_weight: Tensor,
    cu_seqlens: Tensor,
    num_trained: int,
    chunk_size: int,
    grad_hidden: bool,
    grad_weight: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss_sum, seg_nll, seg_count, d loss/d hidden or [0], fp32 d loss/d weight or [0])."""
    ext = _extension(hidden.device)
    return tuple(
        ext.forward(
            hidden,
            weight,
            targets,
            token_weight,
            cu_seqlens,
            num_trained,
            chunk_size,
            grad_hidden,
            grad_weight,
        )
    )


@segment_ce_op.register_fake
def _segment_ce_fake(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    token_weight: Tensor,
    cu_seqlens: Tensor,
    num_trained: int,
    chunk_size: int,
    grad_hidden: bool,
    grad_weight: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    num_segments = cu_seqlens.shape[0] - 1
    return (
        hidden.new_empty((), dtype=torch.float32),
        hidden.new_empty((num_segments,), dtype=torch.float32),
        hidden.new_empty((num_segments,), dtype=torch.int32),
        hidden.new_empty(hidden.shape) if grad_hidden else hidden.new_empty((0,)),
        weight.new_empty(weight.shape, dtype=torch.float32)
        if grad_weight
        else weight.new_empty((0,), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output) -> None:
    _, _, _, grad_hidden, grad_weight = output
    ctx.save_for_backward(grad_hidden, grad_weight)
    ctx.needs = (inputs[7], inputs[8])
    ctx.weight_dtype = inputs[1].dtype
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_loss, grad_seg_nll, grad_seg_count, grad_gh, grad_gw):
    grad_hidden, grad_weight_f32 = ctx.saved_tensors
    need_hidden, need_weight = ctx.needs
    # A 0-dim fp32 factor keeps the 16-bit dtype; the product is formed in fp32, rounded once.
    d_hidden = grad_hidden * grad_loss if need_hidden else None
    d_weight = None
    if need_weight:
        # dW arrives in fp32: scaled in fp32 and rounded to the weight's dtype once, written
        # straight into the result (no fp32 temporary of [V, H]).
        d_weight = grad_weight_f32.new_empty(grad_weight_f32.shape, dtype=ctx.weight_dtype)
        torch.mul(grad_weight_f32, grad_loss, out=d_weight)
    return d_hidden, d_weight, None, None, None, None, None, None, None


torch.library.register_autograd("natscale::segment_ce", _backward, setup_context=_setup_context)


def segment_ce_native(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    token_weight: Tensor,
    cu_seqlens: Tensor,
    *,
    num_trained: int | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the native op; gradients are computed only for inputs that need them."""
    grad_on = torch.is_grad_enabled()
    loss_sum, seg_nll, seg_count, _, _ = segment_ce_op(
        hidden,
        weight,
        targets,
        token_weight.float(),
        cu_seqlens,
        -1 if num_trained is None else int(num_trained),
        0 if chunk_size is None else int(chunk_size),
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
    )
    return loss_sum, seg_nll, seg_count
