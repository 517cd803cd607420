"""natscale's ops. Public API: :func:`segment_cross_entropy` (contract: docs/architecture.md, "The loss op").

Three implementations share one contract: the PyTorch reference (the spec), a CPU C++ build and a
CUDA build (``natscale/csrc/segment_ce``). The native builds come prebuilt or are JIT-built on first use
(:mod:`natscale.ops.builder`); ``NATSCALE_SEGMENT_CE_IMPL`` forces one; ``natscale env`` shows
which is active and why.
"""

from __future__ import annotations

from typing import Any

import torch

from natscale.ops.segment_ce.reference import (
    IGNORE_INDEX,
    segment_cross_entropy_materialized,
    segment_cross_entropy_reference,
)


def segment_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    num_trained: int | None = None,
    chunk_size: int | None = None,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused lm_head projection + segment-masked, token-weighted next-token cross-entropy.

    The [T, V] logits are never materialised by the native builds: untrained tokens are dropped,
    the rest go through the projection in chunks, and the gradients are formed in the same pass.

    ::

        token        0    1    2    3    4    5    6    7    8    9    10
        segment     |------ seg 0 -----|------ seg 1 -----|-- seg 2 -| pad
        targets     -100 -100  y    y   -100  y    y   -100 -100 -100 -100
        cu_seqlens = [0, 4, 8, 10]  (S = 3, T = 11)
        loss_sum   = sum over trained t of token_weight[t] * nll[t]
        seg_nll    = [nll[2] + nll[3], nll[5] + nll[6], 0]    seg_count = [2, 2, 0]

    Args:
        hidden: [T, H] final hidden states, float32 / bfloat16 (float16, float64: reference only;
            the native builds refuse float16, whose gradients they would form before the loss
            scale).
        weight: [V, H] lm_head weight, same dtype (under ZeRO-3: the gathered parameter, i.e. call
            this inside the model's forward; a not-gathered [0] placeholder is a clear error).
        targets: [T] int64 next-token ids; -100 marks untrained tokens (never a NaN, never a cost).
        token_weight: [T] float weight of each token's loss; the caller folds segment weights and
            any per-sequence normalisation in here and divides the sum by its own denominator.
        cu_seqlens: [S + 1] int32 segment offsets (cu_seqlens[0] == 0, non-decreasing,
            cu_seqlens[-1] <= T; tokens after cu_seqlens[-1] are padding), on the same device.
        num_trained: number of targets that are not -100, if the caller knows it on the host
            (from row metadata). The CUDA build then runs its GEMMs over those tokens only,
            without a host sync; without it, CUDA processes all T tokens (untrained ones get zero
            gradient), still without a sync. The CPU build drops untrained tokens either way.
            A wrong value is an error (a device-side assert on CUDA).
        chunk_size: tokens per chunk of the native builds (default: ~1 GiB of logits on CUDA,
            64 MiB of fp32 logits on CPU).
        impl: ``auto`` | ``reference`` | ``cpu`` | ``cuda``; default ``NATSCALE_SEGMENT_CE_IMPL``
            or ``auto`` (the native build for the tensors' device when available).

    Returns:
        loss_sum: fp32 scalar, differentiable w.r.t. ``hidden`` and ``weight``.
        seg_nll: fp32 [S], per-segment sum of nll over trained tokens (no grad; for logging).
        seg_count: int32 [S], per-segment number of trained tokens.
        A segment without trained tokens gives 0 and 0; an all-masked batch gives loss_sum 0.
    """
    from natscale.ops.segment_ce.dispatch import choose_impl

    if weight.numel() == 0:  # every implementation: say why before a shape error hides it
        raise ValueError(
            f"segment_cross_entropy: weight has no elements (shape {list(weight.shape)}); under "
            "ZeRO-3 the lm_head parameter is not gathered: call the op inside the model's "
            "forward (or deepspeed.zero.GatheredParameters)"
        )
    if choose_impl(hidden.device.type, hidden.dtype, impl) != "reference":
        from natscale.ops.segment_ce.function import segment_ce_native

        return segment_ce_native(
            hidden,
            weight,
            targets,
            token_weight,
            cu_seqlens,
            num_trained=num_trained,
            chunk_size=chunk_size,
        )
    return segment_cross_entropy_reference(hidden, weight, targets, token_weight, cu_seqlens)


def report() -> list[dict[str, Any]]:
    """Which implementation of each op is active (and why; what this process ran), and which are
    built or buildable (and why not).

    Never starts a build: ``built`` means prebuilt, loaded, or present in the JIT cache.
    """
    from natscale.ops.builder import SEGMENT_CE_CPU, SEGMENT_CE_CUDA
    from natscale.ops.segment_ce.dispatch import active_impl_why, last_choice

    reference = {"name": "reference", "built": True, "buildable": True, "reason": "pure PyTorch"}
    active, why = active_impl_why()
    return [
        {
            "name": "segment_cross_entropy",
            "active": active,
            "why": why,
            "ran": last_choice(),  # what this process actually ran, per device type
            "implementations": [reference, SEGMENT_CE_CPU.status(), SEGMENT_CE_CUDA.status()],
        }
    ]


__all__ = [
    "IGNORE_INDEX",
    "report",
    "segment_cross_entropy",
    "segment_cross_entropy_materialized",
    "segment_cross_entropy_reference",
]
