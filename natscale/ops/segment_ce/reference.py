"""Pure-PyTorch specification of the segment-masked NAT loss.

This is the spec every other implementation is tested against. It materialises the [T, V] logits,
so it is only for tests, benchmarks and as a fallback.

Legend: T tokens, H hidden size, V vocabulary, S segments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def segment_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted next-token cross-entropy with per-segment sums.

    Args:
        hidden: [T, H] last hidden states (any float dtype).
        weight: [V, H] lm_head weight.
        targets: [T] int64 target ids; ``-100`` marks an untrained token.
        token_weight: [T] float weight of each token's loss (ignored where targets == -100).
        cu_seqlens: [S+1] int32 segment offsets into the T tokens (cu_seqlens[0] == 0,
            cu_seqlens[-1] <= T; tokens past the last offset are padding).
        compute_dtype: dtype of the logits and softmax (default: fp32, or fp64 for fp64 inputs).

    Returns:
        loss_sum: fp32 scalar, sum_t token_weight[t] * nll[t] over trained tokens;
            differentiable w.r.t. ``hidden`` and ``weight``.
        seg_nll: fp32 [S], per-segment sum of nll over trained tokens (not weighted; no grad).
        seg_count: int32 [S], per-segment number of trained tokens.
    """
    if compute_dtype is None:
        compute_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    trained = targets != IGNORE_INDEX
    logits_TV = hidden.to(compute_dtype) @ weight.to(compute_dtype).t()
    safe_targets = torch.where(trained, targets, torch.zeros_like(targets))
    lse_T = torch.logsumexp(logits_TV, dim=-1)
    target_logit_T = logits_TV.gather(1, safe_targets[:, None]).squeeze(1)
    nll_T = torch.where(trained, lse_T - target_logit_T, torch.zeros_like(lse_T))
    w_T = torch.where(trained, token_weight.to(compute_dtype), torch.zeros_like(lse_T))
    loss_sum = (w_T * nll_T).sum()
    out_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
    seg_nll, seg_count = per_segment_sums(nll_T.detach(), trained, cu_seqlens)
    return loss_sum.to(out_dtype), seg_nll.to(out_dtype), seg_count


def per_segment_sums(
    nll_T: torch.Tensor, trained_T: torch.Tensor, cu_seqlens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``nll_T`` and count ``trained_T`` inside each [cu[i], cu[i+1]) range (no host sync)."""
    num_tokens = nll_T.shape[0]
    cu = cu_seqlens.to(device=nll_T.device, dtype=torch.int64)
    num_segments = cu.numel() - 1
    positions = torch.arange(num_tokens, device=nll_T.device)
    # segment id of every token; tokens at/after cu[-1] (padding) map to num_segments (dropped).
    seg_id_T = torch.bucketize(positions, cu[1:], right=True)
    seg_nll = torch.zeros(num_segments + 1, dtype=nll_T.dtype, device=nll_T.device)
    seg_nll.index_add_(0, seg_id_T, nll_T)
    seg_count = torch.zeros(num_segments + 1, dtype=torch.int32, device=nll_T.device)
    seg_count.index_add_(0, seg_id_T, trained_T.to(torch.int32))
    return seg_nll[:num_segments], seg_count[:num_segments]


def segment_cross_entropy_materialized(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss as a model computes it without a fused op: the baseline of tests and benchmarks.

    Logits ``hidden @ weight.T`` in the input dtype (as an ``nn.Linear`` lm_head makes them), then
    ``F.cross_entropy`` in fp32. Tests use it as the "same-dtype PyTorch computation" of the
    tolerance rule; benchmarks time it (plain and under ``torch.compile``). Same contract as
    :func:`segment_cross_entropy_reference`.
    """
    trained = targets != IGNORE_INDEX
    logits_TV = hidden @ weight.t()
    nll_T = F.cross_entropy(logits_TV.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    w_T = torch.where(trained, token_weight.float(), torch.zeros_like(nll_T))
    loss_sum = (w_T * nll_T).sum()
    seg_nll, seg_count = per_segment_sums(nll_T.detach(), trained, cu_seqlens)
    return loss_sum, seg_nll, seg_count
