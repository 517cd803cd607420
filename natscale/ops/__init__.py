"""natscale's ops. Public API: :func:`segment_cross_entropy` (see DESIGN.md, "The segment loss op")."""

from __future__ import annotations

from typing import Any

import torch

from natscale.ops.segment_ce.reference import IGNORE_INDEX, segment_cross_entropy_reference


def segment_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused lm_head + segment-masked weighted cross-entropy. Shapes: see the reference."""
    return segment_cross_entropy_reference(hidden, weight, targets, token_weight, cu_seqlens)


def report() -> list[dict[str, Any]]:
    """Which implementation of each op is active, and which are built or buildable (and why not)."""
    return [
        {
            "name": "segment_cross_entropy",
            "active": "reference",
            "implementations": [
                {"name": "reference", "built": True, "buildable": True, "reason": "pure PyTorch"},
            ],
        }
    ]


__all__ = ["IGNORE_INDEX", "report", "segment_cross_entropy"]
