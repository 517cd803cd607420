"""Packing invariants, property-based (hypothesis)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natscale.data.packing import build_rows, efficiency, pack, plan_bins
from natscale.data.schema import IGNORE_INDEX, ROW_FIELDS, validate_row

PAD = 0


@st.composite
def examples(draw):
    cap = draw(st.integers(8, 64))
    n = draw(st.integers(1, 40))
    lengths = draw(st.lists(st.integers(1, cap), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 1000, size=k).astype(np.int32) for k in lengths]
    masks = [rng.random(k) < 0.6 for k in lengths]
    classes = [int(rng.integers(0, 3)) for _ in lengths]
    weights = [float(rng.choice([0.5, 1.0, 2.0])) for _ in lengths]
    algo = draw(st.sampled_from(["bfd_repair", "bfd", "ffd", "none"]))
    return cap, ids, masks, classes, weights, algo, seed


@settings(max_examples=100, deadline=None)
@given(examples())
def test_packing_invariants(case):
    cap, ids, masks, classes, weights, algo, seed = case
    bins = plan_bins([len(x) for x in ids], cap, algo, seed)
    rows = build_rows(bins, ids, masks, classes, weights, max_seq_len=cap, pad_id=PAD)
    # every kept example lands in exactly one row, once
    assert sorted(itertools.chain.from_iterable(bins)) == list(range(len(ids)))
    loads = [sum(len(ids[i]) for i in b) for b in bins]
    assert max(loads) <= cap
    if algo == "none":  # one example per row
        assert all(len(b) == 1 for b in bins) and len(bins) == len(ids)
    elif algo != "bfd_repair":  # any-fit property of first/best fit: no two rows make one row
        assert all(a + b > cap for a, b in itertools.combinations(loads, 2))
    else:  # the repair starts from best fit and never ends with more rows
        assert len(bins) <= len(plan_bins([len(x) for x in ids], cap, "bfd", seed))
    for r, members in enumerate(bins):
        row = {f: getattr(rows, f)[r] for f in ROW_FIELDS}
        validate_row(row, max_seq_len=cap, where=f"row {r}")  # no target crosses a boundary
        for f, dtype in ROW_FIELDS.items():
            assert row[f].dtype == np.dtype(dtype), f
        inp, pos, tgt, cu = row["input_ids"], row["position_ids"], row["targets"], row["cu_seqlens"]
        assert inp.shape == (cap,) and cu.shape == (len(members) + 1,)
        assert cu[-1] == loads[r] == rows.num_tokens[r]
        assert np.all(inp[cu[-1] :] == PAD) and np.all(tgt[cu[-1] :] == IGNORE_INDEX)
        for k, i in enumerate(members):
            a, b = cu[k], cu[k + 1]
            assert b - a == len(ids[i])
            np.testing.assert_array_equal(inp[a:b], ids[i])  # every token exactly once
            np.testing.assert_array_equal(pos[a:b], np.arange(b - a))  # restarts per segment
            trained = tgt[a:b] != IGNORE_INDEX
            np.testing.assert_array_equal(trained[:-1], masks[i][1:])
            assert not trained[-1]
            assert row["segment_class"][k] == classes[i] and row["segment_weight"][k] == weights[i]
        assert rows.num_trained[r] == sum(int(masks[i][1:].sum()) for i in members)
    # deterministic for a seed
    assert plan_bins([len(x) for x in ids], cap, algo, seed) == bins


def test_plan_is_seeded_and_rejects_oversize():
    lengths = [5, 5, 5, 5, 3, 3, 7, 2, 9, 1] * 5
    assert plan_bins(lengths, 16, "bfd", 1) == plan_bins(lengths, 16, "bfd", 1)
    assert plan_bins(lengths, 16, "bfd", 1) != plan_bins(lengths, 16, "bfd", 2)
    with pytest.raises(ValueError, match="example 1 has length 17, outside"):
        plan_bins([3, 17], 16)
    with pytest.raises(ValueError, match=r"example 1 has length 0, outside \[1, 16\]"):
        plan_bins([3, 0], 16)
    with pytest.raises(ValueError, match="unknown packing algorithm"):
        plan_bins([3], 16, "nfd")


@pytest.mark.parametrize("algo", ["bfd_repair", "bfd", "ffd"])
def test_efficiency_on_agent_like_lengths(algo):
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(6.3, 0.5, size=3000), 50, 4096).astype(int)
    ids = [np.ones(n, np.int32) for n in lengths]
    masks = [np.ones(n, bool) for n in lengths]
    rows = pack(
        ids, masks, [0] * len(ids), [1.0] * len(ids), max_seq_len=4096, pad_id=0, algorithm=algo
    )
    assert efficiency(rows, 4096) > 0.99
