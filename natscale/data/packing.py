"""Packing examples into rows of ``max_seq_len`` tokens (the packed row of ``schema.py``).

``plan_bins`` assigns examples to rows by first-fit-decreasing (``ffd``: the first row with room),
best-fit-decreasing (``bfd``: the row with the least room that still fits), both O(n log n), or
(the default, ``bfd_repair``) best-fit-decreasing followed by the bounded local-search repair of
``packing_search.py``, which stops at the Martello-Toth L2 lower bound on the number of rows
(above ``GROUP_ROWS`` rows holding ``FILL_MIN_ITEMS`` or more examples on average, the repair
starts from ``fill_sizes``'s plan instead where that has fewer rows); ``none`` puts each
example in a row of its own (for model families whose layers carry state across segments:
``natscale.model.families``). Equal lengths are ordered by a seeded shuffle and the rows are
shuffled with the same seed, so the plan is deterministic for a seed; within a row the examples
go longest first. ``build_rows`` lays the examples of each row back to back and pads the end::

    input_ids     a0 a1 a2 b0 b1 b2 b3 pad     targets  a1 a2 -- b1 b2 b3 -- --
    position_ids   0  1  2  0  1  2  3   0     cu_seqlens [0, 3, 7]

A target is the next token of the same segment where that token is trained, so no target
crosses a segment boundary and the last token of every segment has none.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from natscale.data.packing_search import (
    FILL_MIN_ITEMS,
    GROUP_ROWS,
    best_fit,
    bfd_sizes,
    fill_sizes,
    l2_bound,
    repair,
)
from natscale.data.schema import IGNORE_INDEX

ALGORITHMS = ("bfd_repair", "bfd", "ffd", "none")
DEFAULT_ALGORITHM = "bfd_repair"


def plan_bins(
    lengths: Sequence[int], capacity: int, algorithm: str = DEFAULT_ALGORITHM, seed: int = 0
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
    if algorithm == "none":  # one example per row, for models that cannot take packed rows
        bins = [[i] for i in range(len(lengths))]
        rng.shuffle(bins)
        return bins
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties keep the seeded order
    if algorithm == "bfd_repair":
        bins = _repaired(order, lengths, capacity)
    else:
        place = _first_fit if algorithm == "ffd" else best_fit
        bins = place(order, lengths, capacity)
    rng.shuffle(bins)
    return bins


def _repaired(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    # plan on sizes, then hand out the examples of each size in the seeded order
    sizes = [lengths[i] for i in order]
    start = bfd_sizes(sizes, capacity)
    seed = start
    if len(start) > GROUP_ROWS and len(sizes) >= FILL_MIN_ITEMS * len(start):
        # repaired in groups, rows of many examples: start from the fuller of two plans
        filled = fill_sizes(sizes, capacity)
        seed = filled if len(filled) < len(start) else start
    plan = repair(seed, capacity, l2_bound(sizes, capacity))
    if len(plan) >= len(start):  # nothing gained: exactly the bfd plan
        return best_fit(order, lengths, capacity)
    queues: dict[int, list[int]] = {}
    for i in reversed(order):  # pop() from the end yields the seeded order
        queues.setdefault(lengths[i], []).append(i)
    return [[queues[n].pop() for n in sorted(row, reverse=True)] for row in plan]


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


@dataclass
class PackedColumns:
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
) -> PackedColumns:
    """Lay out the examples of each bin as one padded row of ``max_seq_len`` tokens.

    The rows are written straight into three ``[rows, max_seq_len]`` matrices: fresh memory is
    slow to fault in, so no row-sized temporaries are made.
    """
    num_rows = len(bins)
    input_ids = np.full((num_rows, max_seq_len), pad_id, dtype=np.int32)
    targets = np.full((num_rows, max_seq_len), IGNORE_INDEX, dtype=np.int32)
    position_ids = np.empty((num_rows, max_seq_len), dtype=np.int32)
    ramp = np.arange(max_seq_len, dtype=np.int32)
    rows = PackedColumns(input_ids, position_ids, targets, [], [], [], [], [])
    for r, members in enumerate(bins):
        cu = np.zeros(len(members) + 1, dtype=np.int32)
        np.cumsum([ids[i].shape[0] for i in members], out=cu[1:])
        used = int(cu[-1])
        if used > max_seq_len:
            raise ValueError(f"a row holds {used} tokens, more than max_seq_len {max_seq_len}")
        for k, i in enumerate(members):
            a, b = int(cu[k]), int(cu[k + 1])
            input_ids[r, a:b] = ids[i]
            # the next token where it is trained; the segment's last token has none
            np.copyto(targets[r, a : b - 1], ids[i][1:], where=masks[i][1:])
            position_ids[r, a:b] = ramp[: b - a]
        # the padding counts from 0 like one more segment
        position_ids[r, used:] = ramp[: max_seq_len - used]
        rows.cu_seqlens.append(cu)
        rows.segment_class.append(np.array([classes[i] for i in members], dtype=np.int32))
        rows.segment_weight.append(np.array([weights[i] for i in members], dtype=np.float32))
        rows.num_tokens.append(used)
    rows.num_trained = (targets != IGNORE_INDEX).sum(axis=1).tolist()
    return rows


def pack(
    ids: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    classes: Sequence[int],
    weights: Sequence[float],
    *,
    max_seq_len: int,
    pad_id: int,
    algorithm: str = DEFAULT_ALGORITHM,
    seed: int = 0,
) -> PackedColumns:
    """Plan and build packed rows for examples that each fit in ``max_seq_len``."""
    bins = plan_bins([x.shape[0] for x in ids], max_seq_len, algorithm, seed)
    return build_rows(bins, ids, masks, classes, weights, max_seq_len=max_seq_len, pad_id=pad_id)


def efficiency(rows: PackedColumns, max_seq_len: int) -> float:
    """Non-pad tokens / slot tokens."""
    return sum(rows.num_tokens) / (len(rows) * max_seq_len) if len(rows) else 0.0
