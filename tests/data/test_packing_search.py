"""The L2 lower bound and the local-search repair behind ``bfd_repair`` packing."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natscale.bench.datasets import synthetic_lengths
from natscale.bench.presets import DATA_PRESETS
from natscale.data.packing import plan_bins
from natscale.data.packing_search import MAX_PAIRS, _cells, bfd_sizes, l2_bound, repair


def _optimum(sizes: list[int], cap: int) -> int:
    """Fewest bins, by exhaustive search (tiny instances only)."""
    best = len(sizes)

    def place(k: int, loads: list[int]) -> None:
        nonlocal best
        if len(loads) >= best:
            return
        if k == len(sizes):
            best = len(loads)
            return
        for b in range(len(loads)):
            if loads[b] + sizes[k] <= cap:
                loads[b] += sizes[k]
                place(k + 1, loads)
                loads[b] -= sizes[k]
        place(k + 1, [*loads, sizes[k]])

    place(0, [])
    return best


def _l2_by_definition(sizes: list[int], cap: int) -> int:
    best = 0
    for a in [0, *[w for w in sizes if w <= cap / 2]]:
        j1 = [w for w in sizes if w > cap - a]
        j2 = [w for w in sizes if cap / 2 < w <= cap - a]
        j3 = [w for w in sizes if a <= w <= cap / 2]
        extra = max(0, math.ceil((sum(j3) - (len(j2) * cap - sum(j2))) / cap))
        best = max(best, len(j1) + len(j2) + extra)
    return best


@pytest.mark.parametrize(
    ("sizes", "cap", "l1", "l2"),
    [
        ([6, 6, 6], 10, 2, 3),  # three items over C/2: one bin each
        ([6, 6, 6, 4, 4, 4], 10, 3, 3),  # the 4s fill the 6s' bins exactly
        ([7, 7, 7, 4, 4, 4], 10, 4, 5),  # no 4 fits beside a 7: 3 + ceil(12 / 10)
        ([5, 5, 5, 5], 10, 2, 2),  # exactly C/2 pairs up
        ([3, 3, 3, 3, 3, 3], 10, 2, 2),
        ([], 10, 0, 0),
    ],
)
def test_l2_bound_by_hand(sizes, cap, l1, l2):
    assert math.ceil(sum(sizes) / cap) == l1
    assert l2_bound(sizes, cap) == l2 == _l2_by_definition(sizes, cap)
    if sizes:
        assert _optimum(sizes, cap) >= l2


@settings(max_examples=150, deadline=None)
@given(
    st.integers(4, 30).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(st.integers(1, c), min_size=1, max_size=8))
    )
)
def test_l2_bound_is_a_lower_bound_at_least_l1(case):
    cap, sizes = case
    bound = l2_bound(sizes, cap)
    assert bound == _l2_by_definition(sizes, cap)
    assert math.ceil(sum(sizes) / cap) <= bound <= _optimum(sorted(sizes, reverse=True), cap)


def test_l2_bound_rejects_oversize():
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 10\]"):
        l2_bound([3, 11], 10)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(8, 64).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(st.integers(1, c), min_size=1, max_size=60))
    )
)
def test_repair_keeps_the_sizes_and_never_adds_rows(case):
    cap, sizes = case
    start = bfd_sizes(sizes, cap)
    out = repair([list(b) for b in start], cap, l2_bound(sizes, cap))
    assert sorted(itertools.chain.from_iterable(out)) == sorted(sizes)
    assert all(0 < sum(b) <= cap for b in out)
    assert l2_bound(sizes, cap) <= len(out) <= len(start)


def _preset_lengths(name: str, cap: int) -> list[int]:
    rng = np.random.default_rng(0)
    return synthetic_lengths(DATA_PRESETS[name], num=3000, seq_len=cap, rng=rng).tolist()


@pytest.mark.parametrize(
    ("name", "cap"), [("gsm8k", 4096), ("hotpotqa", 8192), ("gsm8k", 2048), ("hotpotqa", 4096)]
)
def test_bfd_repair_reaches_the_bar_on_agent_lengths(name, cap):
    lengths = _preset_lengths(name, cap)
    bound = l2_bound(lengths, cap)
    bins = plan_bins(lengths, cap, "bfd_repair", seed=3)
    assert sorted(itertools.chain.from_iterable(bins)) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    assert len(bins) <= 1.005 * bound < len(plan_bins(lengths, cap, "bfd", seed=3))


def test_bfd_repair_is_deterministic_for_a_seed():
    lengths = _preset_lengths("gsm8k", 2048)
    a = plan_bins(lengths, 2048, "bfd_repair", seed=5)
    assert a == plan_bins(lengths, 2048, "bfd_repair", seed=5)
    b = plan_bins(lengths, 2048, "bfd_repair", seed=6)
    assert a != b  # equal lengths and the rows are ordered by the seed
    # within a row the examples go longest first
    assert all(
        [lengths[i] for i in row] == sorted((lengths[i] for i in row), reverse=True) for row in a
    )


def test_repair_in_groups_keeps_a_valid_plan():
    """Above ``group_rows`` rows the repair runs per group: still every size once, fewer rows."""
    lengths = _preset_lengths("gsm8k", 4096)
    start = bfd_sizes(lengths, 4096)
    bound = l2_bound(lengths, 4096)
    out = repair(start, 4096, bound, group_rows=100)
    assert sorted(itertools.chain.from_iterable(out)) == sorted(lengths)
    assert all(sum(b) <= 4096 for b in out)
    assert bound <= len(out) < len(start)


def test_repair_leaves_rows_of_very_many_short_examples_alone():
    """Beyond MAX_PAIRS (row, slot pair) cells the repair does nothing: bfd's plan."""
    lengths = np.random.default_rng(0).integers(1, 8, size=40000).tolist()
    start = bfd_sizes(lengths, 8192)
    assert _cells(len(start), max(map(len, start)) + 2) > MAX_PAIRS
    assert repair(start, 8192, l2_bound(lengths, 8192)) == start
