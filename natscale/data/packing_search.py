"""Near-optimal bin packing: the Martello-Toth L2 lower bound and a bounded local-search repair.

``l2_bound`` is the L2 bound of Martello and Toth (1990): for every threshold ``a`` in
``[0, C/2]`` the items bigger than ``C - a`` (J1) and those in ``(C/2, C - a]`` (J2) each need a
bin of their own, and the items in ``[a, C/2]`` (J3) need ``ceil((w(J3) - free(J2)) / C)`` more
bins where ``free(J2)`` is the room the J2 bins leave; the bound is the best ``a``. It is at least
the volume bound L1 = ``ceil(sum / C)``.

``repair`` improves a packing by the local search of Levine and Ducatelle (2004, "Ant colony
optimization and local search for bin packing"), on sizes only: dissolve the least-filled rows
into a pool, then let every row that has room swap up to two of its items for up to two pool
items whenever that makes the row fuller (the pool keeps the items it gets back, so the pool's
items get smaller), and pack what is left of the pool best-fit decreasing into new rows. One
evaluation scores the best swap of every (row, pair of slots) against every pool item and pool
pair at once with numpy, and a batch applies the best swap of each row whose pool items are still
free. A round that ends with more rows is undone; after a round without a gain some random rows
(from a fixed seed) are dissolved too. The number of rounds is bounded (no clock is read), so the
result is a function of the input alone; it stops as soon as the rows reach the bound. Above
``GROUP_ROWS`` rows the rows are repaired in groups, so the time grows linearly; a group also
stops when ``PACE_ROUNDS`` rounds together saved fewer than 1 in ``GROUP_PACE`` of its rows.

``fill_sizes`` (best-completion decreasing) is a second start for the repair: each row takes
the longest sizes left and is then completed by the subset of the sizes left with the largest sum
that fits. Where rows hold many examples it leaves far less room than best-fit decreasing (the
room ends up in the last rows), and in groups the repair alone could not make up the difference.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

STALL = 4  # rounds without a gain before the repair stops
PACE_ROUNDS = 10  # in groups: the window of rounds whose gain must keep up the pace
GROUP_PACE = 500  # in groups: stop when a window saved fewer than 1 in this many rows
RANDOM = 5  # random rows dissolved per stalled round, times the stall count
GROUP_ROWS = 1500  # rows repaired together
FILL_GREEDY = 3  # fill_sizes: longest sizes first while the room is >= this x the longest
FILL_SIZES = 64  # fill_sizes: distinct sizes in one subset-sum
FILL_MIN_ITEMS = 3  # examples a row (bfd's mean) from which fill_sizes may seed the repair
MAX_PAIRS = 4_000_000  # (row, slot pair) cells one evaluation may score (~32 MB an array)
TABLE_CAP = 1 << 20  # below this capacity a swap's best pool value is looked up in a table


def l2_bound(lengths: Sequence[int] | np.ndarray, capacity: int) -> int:
    """The Martello-Toth L2 lower bound on the number of rows of ``capacity``."""
    w = np.sort(np.asarray(lengths, dtype=np.int64))
    n = len(w)
    if n == 0:
        return 0
    if w[0] < 0 or w[-1] > capacity:
        raise ValueError(f"lengths must lie in [0, {capacity}]")
    csum = np.concatenate([[0], np.cumsum(w)])
    alphas = np.unique(np.concatenate([[0], w[w <= capacity // 2]]))
    big_lo = np.searchsorted(w, capacity - alphas, side="right")  # J1 = w > C - a
    half = np.searchsorted(w, capacity // 2, side="right")  # J1 + J2 = w > C/2
    a_lo = np.searchsorted(w, alphas, side="left")  # w >= a
    j1 = n - big_lo
    j2n = big_lo - half
    j2_free = j2n * capacity - (csum[big_lo] - csum[half])
    j3s = csum[half] - csum[a_lo]
    extra = np.maximum(0, -(-(j3s - j2_free) // capacity))
    return int((j1 + j2n + extra).max())


def best_fit(order: Sequence[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best fit in the given ``order``: each example goes to the row with the least room that
    still holds it (a new row when none does). Rows as lists of example indices."""
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


def bfd_sizes(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing on bare sizes: rows as lists of sizes."""
    sizes = list(sizes)
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    return [[sizes[i] for i in row] for row in best_fit(order, sizes, capacity)]


def fill_sizes(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-completion decreasing on bare sizes: rows as lists of sizes.

    Each row takes the longest sizes left while its room is at least ``FILL_GREEDY`` times the
    longest size left, then the subset of the sizes left with the largest sum that fits the rest
    of its room, and of those the one of the longest sizes, keeping the short ones for the rows
    to come (a subset-sum over at most ``FILL_SIZES`` distinct sizes, evenly spread over those
    that fit, each as often as it is left and fits). Rows come out nearly full until the sizes
    run short, so the room is left in the last rows. O(rows x FILL_SIZES) big-integer steps.
    """
    count: dict[int, int] = {}
    for x in sizes:
        count[int(x)] = count.get(int(x), 0) + 1
    avail = sorted(count)  # distinct sizes still left, ascending
    if avail and not 0 < avail[0] <= avail[-1] <= capacity:
        raise ValueError(f"sizes must lie in [1, {capacity}]")
    left = sum(count.values())
    bins: list[list[int]] = []

    def take(x: int, k: int) -> None:
        count[x] -= k
        if not count[x]:
            avail.pop(bisect.bisect_left(avail, x))

    while left:
        room, row = capacity, []
        while avail and (not row or room >= FILL_GREEDY * avail[-1]):
            j = bisect.bisect_right(avail, room) - 1
            if j < 0:
                break
            x = avail[j]
            row.append(x)
            room -= x
            take(x, 1)
        hi = bisect.bisect_right(avail, room)
        if hi:
            # reach: bit v set when some subset of the candidates sums to v (<= room)
            mask, reach, steps = (1 << (room + 1)) - 1, 1, []
            # longest first: the backtrack below takes a later (shorter) size only when needed
            for x in reversed(avail[: hi : -(-hi // FILL_SIZES)]):
                more, k = min(count[x], room // x), 1
                while more:  # copies of x in chunks of 1, 2, 4, ... (binary splitting)
                    u = min(k, more)
                    steps.append((x, u, reach))
                    reach = (reach | (reach << (x * u))) & mask
                    more, k = more - u, 2 * k
            got = reach.bit_length() - 1
            for x, u, before in reversed(steps):
                if not (before >> got) & 1:  # this chunk is needed to reach ``got``
                    got -= x * u
                    row += [x] * u
                    take(x, u)
        left -= len(row)
        bins.append(row)
    return bins


class _Rows:
    """Rows as a zero-padded ``[rows, K]`` matrix of sizes, with at least two empty slots each."""

    def __init__(self, bins: list[list[int]], capacity: int) -> None:
        self.capacity = capacity
        self.dtype = np.int32 if capacity < 2**30 else np.int64  # a slot pair's sum fits
        width = max(len(b) for b in bins) + 2
        self.m = np.zeros((len(bins), width), dtype=self.dtype)
        for r, b in enumerate(bins):
            self.m[r, : len(b)] = b
        self._pairs()

    def _pairs(self) -> None:
        a, b = np.triu_indices(self.m.shape[1], 1)
        self.pa, self.pb = a, b

    def widen(self, width: int) -> None:
        """At least ``width`` slots per row."""
        if width > self.m.shape[1]:
            grow = np.zeros((len(self.m), width - self.m.shape[1]), self.dtype)
            self.m = np.concatenate([self.m, grow], axis=1)
            self._pairs()

    def lists(self) -> list[list[int]]:
        return [[int(x) for x in row if x] for row in self.m]


def _pool_values(pool: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted values of the pool's single items and pairs, with the items they use (-1: none)."""
    p = np.asarray(pool, dtype=np.int64)
    ia, ib = np.triu_indices(len(p), 1)
    vals = np.concatenate([p, p[ia] + p[ib]])
    first = np.concatenate([np.arange(len(p)), ia])
    second = np.concatenate([np.full(len(p), -1), ib])
    order = np.argsort(vals, kind="stable")
    return vals[order], first[order], second[order]


def _absorb(rows: _Rows, pool: list[int], max_batches: int) -> list[int]:
    """Swap pool items into rows while some row gets fuller; returns the new pool."""
    cap = rows.capacity
    for _ in range(max_batches):
        if not pool:
            break
        m = rows.m
        free = cap - m.sum(axis=1)
        live = np.flatnonzero(free > 0)
        if len(live) == 0:
            break
        vals, first, second = _pool_values(pool)
        ml = m[live]
        sub = ml[:, rows.pa] + ml[:, rows.pb]  # [live, pairs] sizes a swap frees
        reach = sub + free[live, None]  # <= cap
        if cap < TABLE_CAP:  # fill[v]: the largest pool value <= v (0: none), a lookup table
            below = np.searchsorted(vals, np.arange(cap + 1), side="right") - 1
            fill = np.where(below >= 0, vals[np.maximum(below, 0)], 0)
            got = fill[reach]
        else:
            j = np.searchsorted(vals, reach, side="right") - 1
            got = np.where(j >= 0, vals[np.maximum(j, 0)], 0)
        gain = got - sub  # <= 0 where nothing fits
        best = gain.argmax(axis=1)
        g = gain[np.arange(len(live)), best]
        cand = np.flatnonzero(g > 0)
        if len(cand) == 0:
            break
        cand = cand[np.argsort(-g[cand], kind="stable")]
        picks = np.searchsorted(vals, reach[cand, best[cand]], side="right") - 1
        # the best rows first, each taking its pool items unless a better row took one; every
        # row is a candidate at most once, so the swaps taken are then applied all at once
        used = [False] * len(pool)
        taken: list[int] = []  # positions in cand
        q1s = first[picks].tolist()
        q2s = second[picks].tolist()
        for t, (q1, q2) in enumerate(zip(q1s, q2s, strict=True)):
            if used[q1] or (q2 >= 0 and used[q2]):
                continue
            used[q1] = True
            if q2 >= 0:
                used[q2] = True
            taken.append(t)
        at = np.asarray(taken, dtype=np.int64)
        c = cand[at]
        r = live[c]
        k = best[c]
        sa, sb = rows.pa[k], rows.pb[k]
        old_a, old_b = m[r, sa], m[r, sb]  # the row's items that go back to the pool
        pool_a = np.asarray(pool, dtype=m.dtype)
        q1 = first[picks[at]]
        q2 = second[picks[at]]
        m[r, sa] = pool_a[q1]
        m[r, sb] = np.where(q2 >= 0, pool_a[np.maximum(q2, 0)], 0)
        back = np.stack([old_a, old_b], axis=1).ravel()  # row by row, slot a then b
        out = back[back != 0].tolist()
        pool = [x for x, u in zip(pool, used, strict=True) if not u] + out
        pool.sort()
        if (np.count_nonzero(m[r] == 0, axis=1) < 2).any():
            rows.widen(m.shape[1] + 2)
    return pool


def repair(
    bins: list[list[int]],
    capacity: int,
    target: int,
    *,
    group_rows: int = GROUP_ROWS,
    **budget: int,
) -> list[list[int]]:
    """Fewer rows of the same sizes (lists of sizes), never more; stops at ``target`` rows.

    Above ``group_rows`` rows the rows are dealt (seeded) into groups of about that many, each
    repaired towards its own L2 bound, so the time grows linearly with the rows.
    """
    if len(bins) <= max(target, 1):
        return bins
    groups = -(-len(bins) // group_rows)
    if groups == 1:
        return _repair_group(bins, capacity, target, **budget)
    order = np.random.default_rng(0).permutation(len(bins))
    out: list[list[int]] = []
    for g in range(groups):
        part = [bins[i] for i in order[g::groups]]
        bound = l2_bound([x for b in part for x in b], capacity)
        out += _repair_group(part, capacity, bound, **{"pace": GROUP_PACE, **budget})
    return out


def _cells(rows: int, slots: int) -> int:
    return rows * slots * (slots - 1) // 2


def _repair_group(
    bins: list[list[int]],
    capacity: int,
    target: int,
    *,
    max_rounds: int = 60,
    dissolve: int = 10,
    max_batches: int = 12,
    pace: int = 0,
) -> list[list[int]]:
    """Repair one group (see the module docstring). With ``pace``, it also stops once the last
    ``PACE_ROUNDS`` rounds together saved fewer than 1 in ``pace`` of its rows."""
    if len(bins) <= max(target, 1) or _cells(len(bins), max(map(len, bins)) + 2) > MAX_PAIRS:
        return bins  # very many short examples a row: the slot pairs would not fit the budget
    rows = _Rows(bins, capacity)
    rng = np.random.default_rng(0)  # fixed: the result depends on the input alone
    stall = 0
    seen: list[int] = []  # rows at the start of each round
    for _ in range(max_rounds):
        n = len(rows.m)
        if n <= target:
            break
        if pace and len(seen) >= PACE_ROUNDS and (seen[-PACE_ROUNDS] - n) * pace < n:
            break  # slow progress: what is left is not worth the time
        seen.append(n)
        before = rows.m.copy()
        loads = rows.m.sum(axis=1)
        drop = np.argsort(loads, kind="stable")[: min(n, dissolve)]
        if stall:  # stuck: shake the search with a few (seeded) random rows as well
            drop = np.union1d(drop, rng.choice(n, size=min(n, RANDOM * stall), replace=False))
        keep = np.ones(n, dtype=bool)
        keep[drop] = False
        pool = sorted(int(x) for x in rows.m[drop].ravel() if x)
        rows.m = rows.m[keep]
        pool = _absorb(rows, pool, max_batches)
        extra = bfd_sizes(pool, capacity) if pool else []
        if extra:
            rows.widen(max(len(b) for b in extra) + 2)
            add = np.zeros((len(extra), rows.m.shape[1]), dtype=rows.dtype)
            for r, b in enumerate(extra):
                add[r, : len(b)] = b
            rows.m = np.concatenate([rows.m, add])
        if len(rows.m) > n:  # a worse round is undone; the next one dissolves more rows
            rows.m = before
            rows._pairs()
        stall = 0 if len(rows.m) < n else stall + 1
        if stall > STALL or _cells(*rows.m.shape) > MAX_PAIRS:
            break
    return rows.lists()
