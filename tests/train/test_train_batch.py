"""Micro-batch assembly, loss weights, row order and rank/accumulation sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natscale.data.schema import IGNORE_INDEX, RowError
from natscale.train.batch import collate
from natscale.train.rows import RowOrder, StepPlan
from tests.train.train_fixtures import make_segments, pack, pack_greedy


def _rows():
    segs = make_segments(6, seed=1, max_len=10)
    segs = [
        (t, p, c, w) for (t, p, c, _), w in zip(segs, [1.0, 0.5, 2.0, 1.0, 1.0, 0.25], strict=True)
    ]
    return [pack(segs[:2], 24), pack(segs[2:5], 32), pack(segs[5:], 12)], segs


def test_collate_pads_flattens_and_counts():
    rows, segs = _rows()
    mb = collate([dict(r, index=i) for i, r in enumerate(rows)], loss_norm="token", vocab_size=96)
    assert mb.input_ids_BL.shape == (3, 32) and mb.targets_T.shape == (96,)
    n = [len(s[0]) for s in segs]
    # row b's segment offsets shifted by b * 32; the first one of row b>0 absorbs row b-1's padding
    cu = [0, n[0], n[0] + n[1], 32 + n[2], 32 + n[2] + n[3], 32 + n[2] + n[3] + n[4], 64 + n[5]]
    assert mb.cu_seqlens.tolist() == cu and mb.cu_seqlens.dtype == torch.int32
    assert mb.num_slot_tokens == 3 * 32  # padded to the longest row
    assert mb.num_nonpad_tokens == sum(n)
    trained = int((mb.targets_T != IGNORE_INDEX).sum())
    assert mb.num_trained_tokens == trained
    assert mb.sum_sq_segment_len == sum(x * x for x in n)
    assert mb.segment_len_S.tolist() == n  # without the padding cu_seqlens gives the next row
    # extra padding never restarts the position count (it would look like a new segment)
    pos = mb.position_ids_BL[2]
    assert torch.all(pos[12:] == torch.arange(13, 33) + pos[11] - 12)


def test_collate_cu_seqlens_cover_each_segment():
    rows, segs = _rows()
    mb = collate(rows, loss_norm="token", vocab_size=96)
    cu = mb.cu_seqlens.tolist()
    assert len(cu) == len(segs) + 1
    ids = mb.input_ids_BL.reshape(-1)
    # every segment's tokens are inside its [cu[i], cu[i+1]) range (row padding folded in front)
    for i, (tokens, *_rest) in enumerate(segs):
        window = ids[cu[i] : cu[i + 1]].tolist()
        n = len(tokens)
        assert any(window[j : j + n] == tokens.tolist() for j in range(len(window) - n + 1)), i


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_token_weights(norm: str):
    rows, segs = _rows()
    mb = collate(rows, loss_norm=norm, vocab_size=96)
    w = mb.token_weight_T
    trained = mb.targets_T != IGNORE_INDEX
    assert torch.all(w[~trained] == 0)
    cu = mb.cu_seqlens.tolist()
    for i, (_, _, _, weight) in enumerate(segs):
        seg_w = w[cu[i] : cu[i + 1]][trained[cu[i] : cu[i + 1]]]
        n = len(seg_w)
        expected = weight if norm == "token" else weight / n
        assert torch.allclose(seg_w, torch.full((n,), expected))
    assert mb.num_trained_segments == len(segs)


def test_a_segment_without_trained_tokens_is_not_counted():
    rows, segs = _rows()
    row = dict(rows[1], targets=np.array(rows[1]["targets"]))
    start, end = row["cu_seqlens"][1], row["cu_seqlens"][2]  # the row's second segment
    row["targets"][start:end] = IGNORE_INDEX
    mb = collate([rows[0], row, rows[2]], loss_norm="sequence", vocab_size=96)
    assert mb.num_trained_segments == len(segs) - 1  # the sequence-mean denominator
    assert torch.all(mb.token_weight_T[32 + start : 32 + end] == 0)


def test_collate_rejects_ids_outside_the_vocabulary():
    rows, _ = _rows()
    with pytest.raises(RowError, match=r"row 7: token id .* outside the model's vocabulary"):
        collate([dict(rows[0], index=7)], loss_norm="token", vocab_size=5)
    negative = dict(rows[0], input_ids=np.array(rows[0]["input_ids"]))
    negative["input_ids"][3] = -2
    with pytest.raises(RowError, match=r"row 0: token id -2 is outside"):
        collate([negative], loss_norm="token", vocab_size=96)


def test_row_order_is_seeded_per_epoch_and_covers_every_row():
    order = RowOrder(10, seed=3, shuffle=True)
    epoch0 = [order[i] for i in range(10)]
    epoch1 = [order[i] for i in range(10, 20)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10)) and epoch0 != epoch1
    assert epoch0 == [RowOrder(10, seed=3, shuffle=True)[i] for i in range(10)]
    assert [RowOrder(10, seed=3, shuffle=False)[i] for i in range(12)] == [*range(10), 0, 1]
    with pytest.raises(ValueError, match="the dataset has no rows"):
        RowOrder(0, seed=3, shuffle=True)


def test_micro_batch_m_of_rank_r_holds_the_documented_offsets():
    """rows.py: micro-batch m of rank r holds offsets [(m * world + r) * B, ... + B) of the step."""
    order = RowOrder(100, seed=0, shuffle=False)
    assert StepPlan(2, 0, 2, 2).micro_batches(order, 10) == [[10, 11], [14, 15]]
    assert StepPlan(2, 1, 2, 2).micro_batches(order, 10) == [[12, 13], [16, 17]]


@pytest.mark.parametrize(("world", "accum"), [(1, 4), (2, 2), (4, 1)])
def test_a_step_takes_the_same_rows_whatever_the_split(world: int, accum: int):
    order = RowOrder(13, seed=0, shuffle=True)
    for cursor in (0, 8, 12):  # the last one crosses into epoch 1
        rows = sorted(
            i
            for r in range(world)
            for mb in StepPlan(world, r, accum, 2).micro_batches(order, cursor)
            for i in mb
        )
        expected = sorted(order[cursor + j] for j in range(8))
        assert rows == expected


def test_steps_for_epochs():
    assert StepPlan(2, 0, 2, 1).steps_for_epochs(10, 1.0) == 3
    assert StepPlan(1, 0, 1, 1).steps_for_epochs(10, 2.5) == 25


def test_pack_greedy_rows_are_valid():
    rows = pack_greedy(make_segments(30, seed=0), 64)
    assert all(len(r["input_ids"]) == 64 for r in rows)
    assert sum(len(r["segment_class"]) for r in rows) == 30
    assert np.all([r["cu_seqlens"][-1] <= 64 for r in rows])
