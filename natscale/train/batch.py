"""Micro-batches from packed rows, with the per-token loss weights of the chosen normalisation.

Legend: B rows in the micro-batch, L the longest row, T = B * L flattened tokens, S segments of all
rows. Rows shorter than L are padded at the end (padding continues the position count, so it forms
its own attention block and never joins a real segment; its targets are -100). Rows of one
segment each (``pack.algorithm: none``) are first cut to the longest segment: their own padding,
after the segment, changes nothing a causal model computes for it.

``cu_seqlens`` of the micro-batch indexes the flattened [T] tokens. The first segment of row b>0
starts at ``b * L``, not at the end of row b-1's last segment: the padding between them is folded
into that segment's range. This is harmless because padding is never trained (it adds 0 to the
segment's loss sum and token count) and keeps the offsets contiguous, as the loss op requires.

Loss weights (the trainer divides the weighted sum by a whole-step denominator):
    token:    token_weight = segment_weight;                 denominator = trained tokens
    sequence: token_weight = segment_weight / n_trained(seg); denominator = segments with a trained token
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from natscale.data.schema import IGNORE_INDEX, RowError


@dataclass
class MicroBatch:
    input_ids_BL: torch.Tensor  # int64
    position_ids_BL: torch.Tensor  # int64
    targets_T: torch.Tensor  # int64, -100 = untrained
    token_weight_T: torch.Tensor  # float32
    nonpad_T: torch.Tensor  # bool: a token of a real segment (not padding)
    cu_seqlens: torch.Tensor  # int32 [S+1]
    segment_class_S: torch.Tensor  # int64 [S]
    num_slot_tokens: int  # B * L: tokens the model processes, padding included
    num_nonpad_tokens: int
    num_trained_tokens: int
    num_trained_segments: int
    sum_sq_segment_len: int  # sum over segments of length^2 (attention FLOPs)
    segment_len_S: np.ndarray  # int64 [S]: each segment's length (cu_seqlens's gaps hold padding)

    def model_inputs(self, device: torch.device | str) -> dict[str, torch.Tensor | int]:
        return {
            "num_trained": self.num_trained_tokens,
            "input_ids": self.input_ids_BL.to(device, non_blocking=True),
            "position_ids": self.position_ids_BL.to(device, non_blocking=True),
            "targets": self.targets_T.to(device, non_blocking=True),
            "token_weight": self.token_weight_T.to(device, non_blocking=True),
            "cu_seqlens": self.cu_seqlens.to(device, non_blocking=True),
            "nonpad": self.nonpad_T.to(device, non_blocking=True),
        }


def collate(
    rows: list[dict[str, Any]],
    *,
    loss_norm: str,
    vocab_size: int,
    pad_id: int = 0,
    where: str = "data",
) -> MicroBatch:
    """Stack packed rows (dicts in the schema of natscale.data.schema, plus ``index``)."""
    if loss_norm not in ("token", "sequence"):
        raise ValueError(f"loss_norm must be 'token' or 'sequence', got {loss_norm!r}")
    length = max(len(r["input_ids"]) for r in rows)
    if all(len(r["cu_seqlens"]) == 2 for r in rows):
        # one example per row (pack.algorithm: none): the rows' own padding is never computed
        length = max(int(r["cu_seqlens"][-1]) for r in rows)
        rows = [_trimmed(r, length) for r in rows]
    num_rows = len(rows)
    input_ids = np.full((num_rows, length), pad_id, dtype=np.int64)
    position_ids = np.zeros((num_rows, length), dtype=np.int64)
    targets = np.full((num_rows, length), IGNORE_INDEX, dtype=np.int64)
    weights = np.zeros((num_rows, length), dtype=np.float32)
    nonpad = np.zeros((num_rows, length), dtype=bool)
    cu_parts = [np.zeros(1, dtype=np.int64)]
    classes = []
    lengths = []
    counts = {"nonpad": 0, "trained": 0, "segments": 0, "sq": 0}
    for b, row in enumerate(rows):
        row_len = len(row["input_ids"])
        ids = np.asarray(row["input_ids"], dtype=np.int64)
        _check_ids(ids, vocab_size, f"{where}: row {row.get('index', b)}")
        input_ids[b, :row_len] = ids
        position_ids[b, :row_len] = row["position_ids"]
        # extra padding continues the row's last position so it never looks like a new segment start
        position_ids[b, row_len:] = (
            np.arange(1, length - row_len + 1) + position_ids[b, row_len - 1]
        )
        targets[b, :row_len] = row["targets"]
        cu = np.asarray(row["cu_seqlens"], dtype=np.int64)
        nonpad[b, : cu[-1]] = True
        weights[b, :row_len] = _token_weights(row, cu, loss_norm, counts)
        cu_parts.append(cu[1:] + b * length)
        classes.append(np.asarray(row["segment_class"], dtype=np.int64))
        lengths.append(np.diff(cu))
        counts["nonpad"] += int(cu[-1])
    return MicroBatch(
        input_ids_BL=torch.from_numpy(input_ids),
        position_ids_BL=torch.from_numpy(position_ids),
        targets_T=torch.from_numpy(targets.reshape(-1)),
        token_weight_T=torch.from_numpy(weights.reshape(-1)),
        nonpad_T=torch.from_numpy(nonpad.reshape(-1)),
        cu_seqlens=torch.from_numpy(np.concatenate(cu_parts).astype(np.int32)),
        segment_class_S=torch.from_numpy(np.concatenate(classes)),
        num_slot_tokens=num_rows * length,
        num_nonpad_tokens=counts["nonpad"],
        num_trained_tokens=counts["trained"],
        num_trained_segments=counts["segments"],
        sum_sq_segment_len=counts["sq"],
        segment_len_S=np.concatenate(lengths),
    )


def _trimmed(row: dict[str, Any], length: int) -> dict[str, Any]:
    """A one-segment row without the padding past ``length`` (its segment ends before it)."""
    if len(row["input_ids"]) <= length:
        return row
    cut = ("input_ids", "position_ids", "targets")
    return {k: (v[:length] if k in cut else v) for k, v in row.items()}


def _token_weights(
    row: dict[str, Any], cu: np.ndarray, loss_norm: str, counts: dict[str, int]
) -> np.ndarray:
    """Per-token loss weight of one row (0 on untrained tokens and padding); updates ``counts``."""
    seg_len = np.diff(cu)
    num_segments = len(seg_len)
    trained = np.asarray(row["targets"])[: cu[-1]] != IGNORE_INDEX
    seg_id = np.repeat(np.arange(num_segments), seg_len)
    n_trained = np.bincount(seg_id[trained], minlength=num_segments)
    seg_weight = np.asarray(row["segment_weight"], dtype=np.float32)
    if loss_norm == "sequence":
        seg_weight = seg_weight / np.maximum(n_trained, 1).astype(np.float32)
    out = np.zeros(len(row["input_ids"]), dtype=np.float32)
    out[: cu[-1]] = np.where(trained, seg_weight[seg_id], 0.0)
    counts["trained"] += int(trained.sum())
    counts["segments"] += int(np.count_nonzero(n_trained))
    counts["sq"] += int(np.sum(seg_len.astype(np.int64) ** 2))
    return out


def _check_ids(ids: np.ndarray, vocab_size: int, where: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids.max()) if ids.max() >= vocab_size else int(ids.min())
        raise RowError(
            f"{where}: token id {bad} is outside the model's vocabulary [0, {vocab_size}); "
            "the data was prepared with another tokenizer than the model's"
        )
