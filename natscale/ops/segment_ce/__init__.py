from natscale.ops.segment_ce.reference import (
    IGNORE_INDEX,
    segment_cross_entropy_materialized,
    segment_cross_entropy_reference,
)

__all__ = [
    "IGNORE_INDEX",
    "segment_cross_entropy_materialized",
    "segment_cross_entropy_reference",
]
