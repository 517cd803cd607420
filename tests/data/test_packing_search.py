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
from natscale.data.packing_search import (
    GROUP_ROWS,
    MAX_PAIRS,
    TABLE_CAP,
    _cells,
    _repair_group,
    bfd_sizes,
    fill_sizes,
    l2_bound,
    repair,
)


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


@settings(max_examples=100, deadline=None)
@given(
    st.integers(8, 64).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(st.integers(1, c), min_size=1, max_size=80))
    )
)
def test_fill_sizes_keeps_the_sizes_within_capacity(case):
    cap, sizes = case
    rows = fill_sizes(sizes, cap)
    assert sorted(itertools.chain.from_iterable(rows)) == sorted(sizes)
    assert all(0 < sum(r) <= cap for r in rows)
    assert len(rows) >= l2_bound(sizes, cap)
    assert rows == fill_sizes(list(sizes), cap)  # a function of the sizes alone


def test_fill_sizes_completes_rows_exactly_where_bfd_does_not():
    sizes = [5, 4, 4, 3, 2, 2]
    assert bfd_sizes(sizes, 10) == [[5, 4], [4, 3, 2], [2]]  # best fit: 4 goes beside the 5
    rows = fill_sizes(sizes, 10)  # the 5 is completed to exactly 10
    assert [sorted(r, reverse=True) for r in rows] == [[5, 3, 2], [4, 4, 2]]


def test_fill_sizes_completes_with_the_longest_sizes():
    """Of the completions that fill a row equally, the one of the longest sizes: the short ones
    are kept for the rows still to come (6 + 4, not 6 + 2 + 2)."""
    assert fill_sizes([6, 4, 2, 2], 10) == [[6, 4], [2, 2]]


@pytest.mark.parametrize("sizes", [[3, 0], [3, 11]])
def test_fill_sizes_rejects_sizes_outside_the_row(sizes):
    with pytest.raises(ValueError, match=r"sizes must lie in \[1, 10\]"):
        fill_sizes(sizes, 10)
    assert fill_sizes([], 10) == []


def _many_per_row(n: int, seed: int) -> list[int]:
    """Templated-agent-like lengths: a few ReAct steps of ~84 tokens, +-8 tokens of noise."""
    rng = np.random.default_rng(seed)
    return (168 + 84 * rng.integers(1, 5, size=n) + rng.integers(-8, 9, size=n)).tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_bfd_repair_at_scale_seeds_with_fill_and_reaches_the_bar(seed):
    """Above GROUP_ROWS rows of many examples, the repair starts from the fuller of bfd and
    fill_sizes: a valid plan, never more rows than bfd, within 0.5% of L2, deterministic."""
    lengths = _many_per_row(20000, seed)
    bound = l2_bound(lengths, 4096)
    bfd = plan_bins(lengths, 4096, "bfd")
    assert len(bfd) > max(GROUP_ROWS, 1.005 * bound)  # several groups; bfd misses the bar
    bins = plan_bins(lengths, 4096, "bfd_repair")
    assert sorted(itertools.chain.from_iterable(bins)) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 4096 for b in bins)
    assert bound <= len(bins) <= 1.005 * bound < len(bfd)
    assert bins == plan_bins(lengths, 4096, "bfd_repair")


def test_repair_in_groups_keeps_pace():
    """With ``pace`` a group stops once ten rounds save fewer than 1 in ``pace`` of its rows: a
    valid plan with fewer rows than the start, more than without the rule (here ~2 rows an
    example, where the search gains slowly)."""
    lengths = _many_per_row(6000, 2)
    lengths = [x for x in lengths if x <= 1024]
    start = bfd_sizes(lengths, 1024)
    bound = l2_bound(lengths, 1024)
    free = _repair_group([list(b) for b in start], 1024, bound, max_rounds=60)
    paced = _repair_group([list(b) for b in start], 1024, bound, max_rounds=60, pace=50)
    assert sorted(itertools.chain.from_iterable(paced)) == sorted(lengths)
    assert len(free) < len(paced) < len(start)


@pytest.mark.parametrize("scale", [2**12, 2**21])
def test_repair_plans_the_same_at_a_huge_capacity(scale):
    """Sizes and capacity times ``scale`` (past TABLE_CAP; 2**31 also past int32) make the same
    plan, scaled: the search compares sizes only."""
    lengths = _preset_lengths("gsm8k", 2048)[:600]
    start = bfd_sizes(lengths, 2048)
    plan = repair([list(b) for b in start], 2048, l2_bound(lengths, 2048))
    assert len(plan) < len(start)
    big = [[x * scale for x in b] for b in start]
    assert 2048 * scale > TABLE_CAP
    out = repair(big, 2048 * scale, l2_bound([x * scale for x in lengths], 2048 * scale))
    assert out == [[x * scale for x in b] for b in plan]
