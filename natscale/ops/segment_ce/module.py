"""``nn.Module`` wrapper of :func:`natscale.ops.segment_cross_entropy` (holds the options only)."""

from __future__ import annotations

from torch import Tensor, nn


class SegmentCrossEntropy(nn.Module):
    """Fused lm_head projection + segment-masked weighted cross-entropy.

    The module owns no parameters: pass the lm_head weight to ``forward`` (under ZeRO-3, call it
    inside the model's forward so DeepSpeed has gathered that weight).

    Args:
        impl: ``auto`` | ``reference`` | ``cpu`` | ``cuda``; default: ``NATSCALE_SEGMENT_CE_IMPL``.
        chunk_size: tokens per chunk of the native implementations (default: a memory budget).
    """

    def __init__(self, *, impl: str | None = None, chunk_size: int | None = None) -> None:
        super().__init__()
        self.impl = impl
        self.chunk_size = chunk_size

    def forward(
        self,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        token_weight: Tensor,
        cu_seqlens: Tensor,
        num_trained: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Shapes as :func:`natscale.ops.segment_cross_entropy`."""
        from natscale.ops import segment_cross_entropy

        return segment_cross_entropy(
            hidden,
            weight,
            targets,
            token_weight,
            cu_seqlens,
            num_trained=num_trained,
            chunk_size=self.chunk_size,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return f"impl={self.impl or 'env/auto'}, chunk_size={self.chunk_size or 'auto'}"
