"""Packing examples into rows of ``max_seq_len`` tokens (the packed row of ``schema.py``).

``plan_bins`` assigns examples to rows by first-fit-decreasing (``ffd``: the first row with room)
or best-fit-decreasing (``bfd``: the row with the least room that still fits), both
O(n log n); equal lengths are ordered by a seeded shuffle and the rows are shuffled with the same
seed, so the plan is deterministic for a seed. ``build_rows`` lays the examples of each row
back to back and pads the end::

    input_ids     a0 a1 a2 b0 b1 b2 b3 pad     targets  a1 a2 -- b1 b2 b3 -- --
    position_ids   0  1  2  0  1  2  3   0     cu_seqlens [0, 3, 7]

A target is the next token of the same segment where that token is trained, so no target
crosses a segment boundary and the last token of every segment has none.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from natscale.data.schema import IGNORE_INDEX

ALGORITHMS = ("bfd", "ffd")


def plan_bins(
    lengths: Sequence[int], capacity: int, algorithm: str = "bfd", seed: int = 0
) -> list[list[int]]:
    """Rows as lists of example indices; every length must be in [1, capacity]."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown packing algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    lengths = [int(x) for x in lengths]
    bad = [i for i, n in enumerate(lengths) if not 0 < n <= capacity]
    if bad:
        raise ValueError(
            f"example {bad[0]} has length {lengths[bad[0]]}, outside [1, {capacity}]; "
            "truncate or drop it before packing"
        )
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties keep the seeded order
    place = _first_fit if algorithm == "ffd" else _best_fit
    bins = place(order, lengths, capacity)
    rng.shuffle(bins)
    return bins


def _first_fit(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    # max segment tree over the rows' free space; the leftmost leaf with room is the first fit
    size = 1
    while size < max(1, len(order)):
        size *= 2
    tree = [0] * (2 * size)
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if tree[1] < n:  # open a new row
            leaf = len(bins)
            bins.append([])
            node = size + leaf
            tree[node] = capacity
            node //= 2
            while node:
                tree[node] = max(tree[2 * node], tree[2 * node + 1])
                node //= 2
        node = 1
        while node < size:
            node = 2 * node if tree[2 * node] >= n else 2 * node + 1
        bins[node - size].append(i)
        tree[node] -= n
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def _best_fit(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    free: list[tuple[int, int]] = []  # sorted (free space, row index)
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            row, room = len(bins), capacity
            bins.append([])
        else:
            room, row = free.pop(k)
        bins[row].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    return bins


@dataclass
class PackedRows:
    """Columns of packed rows, dtypes as in ``schema.ROW_FIELDS``: one numpy array per row, or
    for the fixed-length columns of :func:`build_rows` one ``[rows, L]`` matrix (a sequence of
    its rows too, and written to Arrow without a copy)."""

    input_ids: list[np.ndarray] | np.ndarray
    position_ids: list[np.ndarray] | np.ndarray
    targets: list[np.ndarray] | np.ndarray
    cu_seqlens: list[np.ndarray]
    segment_class: list[np.ndarray]
    segment_weight: list[np.ndarray]
    num_tokens: list[int]
    num_trained: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    def columns(self) -> dict[str, list | np.ndarray]:
        return dict(self.__dict__)


def build_rows(
    bins: list[list[int]],
    ids: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    classes: Sequence[int],
    weights: Sequence[float],
    *,
    max_seq_len: int,
    pad_id: int,
) -> PackedRows:
    """Lay out the examples of each bin as one padded row of ``max_seq_len`` tokens.

    Vectorised over all rows: the examples are concatenated in row order into one token
    stream (``*_S`` per segment, ``*_N`` per token of the stream), whose targets and positions
    are computed at once and then scattered into ``[rows, max_seq_len]`` matrices.
    """
    num_rows = len(bins)
    order = [i for members in bins for i in members]
    len_S = np.array([ids[i].shape[0] for i in order], dtype=np.int64)
    seg_end_S = np.cumsum(len_S)
    seg_start_S = seg_end_S - len_S
    # segments [first_R[r], first_R[r + 1]) belong to row r
    first_R = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum([len(members) for members in bins], out=first_R[1:])
    tok_R = np.concatenate([[0], seg_end_S])[first_R]  # stream offset where each row starts
    used_R = np.diff(tok_R)
    if num_rows and used_R.max() > max_seq_len:
        raise ValueError(
            f"a row holds {int(used_R.max())} tokens, more than max_seq_len {max_seq_len}"
        )
    ids_N = np.concatenate([ids[i] for i in order]) if order else np.zeros(0, np.int64)
    mask_N = np.concatenate([masks[i] for i in order]) if order else np.zeros(0, bool)
    # the next token where it is trained; never across a segment's end
    tgt_N = np.full(ids_N.shape[0], IGNORE_INDEX, dtype=np.int64)
    tgt_N[:-1] = np.where(mask_N[1:], ids_N[1:], IGNORE_INDEX)
    tgt_N[seg_end_S - 1] = IGNORE_INDEX
    pos_N = np.arange(ids_N.shape[0], dtype=np.int64) - np.repeat(seg_start_S, len_S)

    # row-major order of the non-pad slots is the stream's order
    col_L = np.arange(max_seq_len, dtype=np.int64)
    real_RL = col_L < used_R[:, None]
    input_ids = np.full((num_rows, max_seq_len), pad_id, dtype=np.int64)
    input_ids[real_RL] = ids_N
    targets = np.full((num_rows, max_seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[real_RL] = tgt_N
    # positions restart in every segment; the padding counts from 0 like one more segment
    position_ids = col_L - used_R[:, None]
    position_ids[real_RL] = pos_N
    num_trained_R = (targets != IGNORE_INDEX).sum(axis=1)

    class_S = np.array([classes[i] for i in order], dtype=np.int32)
    weight_S = np.array([weights[i] for i in order], dtype=np.float32)
    rows = PackedRows([], [], [], [], [], [], [], [])
    for r in range(num_rows):
        a, b = int(first_R[r]), int(first_R[r + 1])
        cu = np.zeros(b - a + 1, dtype=np.int32)
        cu[1:] = seg_end_S[a:b] - tok_R[r]
        rows.cu_seqlens.append(cu)
        rows.segment_class.append(class_S[a:b])
        rows.segment_weight.append(weight_S[a:b])
    rows.input_ids, rows.position_ids, rows.targets = input_ids, position_ids, targets
    rows.num_tokens = used_R.tolist()
    rows.num_trained = num_trained_R.tolist()
    return rows


def pack(
    ids: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    classes: Sequence[int],
    weights: Sequence[float],
    *,
    max_seq_len: int,
    pad_id: int,
    algorithm: str = "bfd",
    seed: int = 0,
) -> PackedRows:
    """Plan and build packed rows for examples that each fit in ``max_seq_len``."""
    bins = plan_bins([x.shape[0] for x in ids], max_seq_len, algorithm, seed)
    return build_rows(bins, ids, masks, classes, weights, max_seq_len=max_seq_len, pad_id=pad_id)


def efficiency(rows: PackedRows, max_seq_len: int) -> float:
    """Non-pad tokens / slot tokens."""
    return sum(rows.num_tokens) / (len(rows) * max_seq_len) if len(rows) else 0.0
