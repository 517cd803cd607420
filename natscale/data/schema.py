"""The packed row: the contract between ``natscale prepare`` and the trainer.

See docs/architecture.md, "The prepared directory and the packed row".

A row holds several examples (segments) back to back, padded at the end only::

    input_ids     [L]   int32    tokens of segments 0..S-1, then padding
    position_ids  [L]   int32    0,1,2,.. restarting at every segment (padding continues from 0)
    targets       [L]   int32    next token of the same segment where it is trained, else -100
    cu_seqlens    [S+1] int32    segment offsets; cu_seqlens[-1] = number of non-pad tokens
    segment_class [S]   int32    0 = success / top bucket, 1.. = failure classes
    segment_weight[S]   float32  per-segment loss weight from the strategy

Example (L=8, two segments of 3 and 4 tokens, one pad)::

    input_ids     a0 a1 a2 b0 b1 b2 b3 pad
    position_ids   0  1  2  0  1  2  3   0
    targets       a1 a2 -- b1 b2 b3 -- --      (-- = -100; also wherever the token is untrained)
    cu_seqlens    [0, 3, 7]

Attention is block-causal: a token sees only earlier tokens of its own segment. The token
columns are int32 on disk (half the bytes to build, write and read); the collator casts them to
int64. Rows written as int64 (by earlier versions) are still read.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

IGNORE_INDEX = -100

ROW_FIELDS: dict[str, str] = {
    "input_ids": "int32",
    "position_ids": "int32",
    "targets": "int32",
    "cu_seqlens": "int32",
    "segment_class": "int32",
    "segment_weight": "float32",
}

# older prepared data: the token columns as int64 (read as they are; cast in the collator)
LEGACY_DTYPES: dict[str, str] = {"input_ids": "int64", "position_ids": "int64", "targets": "int64"}


class RowError(ValueError):
    """A packed row breaks the contract above."""


def validate_row(
    row: Mapping[str, Any], *, max_seq_len: int | None = None, where: str = "row"
) -> None:
    """Raise :class:`RowError` naming ``where`` and the field if ``row`` breaks the contract."""
    missing = [f for f in ROW_FIELDS if f not in row]
    if missing:
        raise RowError(
            f"{where}: missing field(s) {missing}; a packed row needs {list(ROW_FIELDS)}"
        )
    a = {f: np.asarray(row[f]) for f in ROW_FIELDS}
    length = a["input_ids"].shape[0]
    for f in ("position_ids", "targets"):
        if a[f].shape != (length,):
            raise RowError(f"{where}: field {f!r} has shape {a[f].shape}, expected ({length},)")
    if max_seq_len is not None and length > max_seq_len:
        raise RowError(f"{where}: length {length} exceeds max_seq_len {max_seq_len}")
    cu = a["cu_seqlens"]
    num_segments = cu.shape[0] - 1
    if num_segments < 0 or cu[0] != 0 or np.any(np.diff(cu) <= 0) or cu[-1] > length:
        raise RowError(
            f"{where}: field 'cu_seqlens' {cu.tolist()} must start at 0, rise strictly, end <= {length}"
        )
    for f in ("segment_class", "segment_weight"):
        if a[f].shape != (num_segments,):
            raise RowError(
                f"{where}: field {f!r} has shape {a[f].shape}, expected ({num_segments},)"
            )
    for start, end in itertools.pairwise(cu.tolist()):
        pos = a["position_ids"][start:end]
        if not np.array_equal(pos, np.arange(end - start)):
            raise RowError(
                f"{where}: field 'position_ids' must restart at 0 in the segment [{start}, {end})"
            )
        tgt = a["targets"][start:end]
        trained = tgt != IGNORE_INDEX
        if end - start and tgt[-1] != IGNORE_INDEX:
            raise RowError(f"{where}: field 'targets' crosses the segment boundary at {end}")
        nxt = a["input_ids"][start + 1 : end]
        if np.any(tgt[:-1][trained[:-1]] != nxt[trained[:-1]]):
            raise RowError(
                f"{where}: field 'targets' is not the next input token in segment [{start}, {end})"
            )
    if np.any(a["targets"][cu[-1] :] != IGNORE_INDEX):
        raise RowError(f"{where}: field 'targets' must be -100 on padding")
