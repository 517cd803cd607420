"""nat-fine refuses NaN / out-of-range scores and questions that share an id but not their text,
naming file, record and field (issue 12, item 8)."""

import json

import pytest

from natscale.data.errors import DataError
from natscale.data.formats import load_trajectories
from natscale.data.prepare import prepare

from .nat_test_data import NAT_TRAJ, QUESTION, write_jsonl
from .test_prepare import _config


def _with_score(nat_files, score):
    traj, _, _ = nat_files
    recs = json.loads(traj.read_text())
    recs[1]["info"]["f1"] = score
    traj.write_text(json.dumps(recs))  # json writes NaN / Infinity as JavaScript does


@pytest.mark.parametrize(
    ("score", "needle"),
    [
        (float("nan"), r"record 1: field 'info.f1': score is nan, not a finite number"),
        (float("inf"), r"record 1: field 'info.f1': score is inf, not a finite number"),
        (1.5, r"record 1: field 'info.f1': trajectory 'q1' has score 1.5, outside \[0, 1\]"),
        (-0.2, r"record 1: field 'info.f1': trajectory 'q1' has score -0.2, outside \[0, 1\]"),
    ],
)
def test_nat_fine_bad_scores_name_the_record(tokenizer_dir, nat_files, tmp_path, score, needle):
    _with_score(nat_files, score)
    cfg = _config(tokenizer_dir, nat_files, **{"strategy.name": "nat-fine"})
    with pytest.raises(DataError, match=rf"trajectories\.json: {needle}"):
        prepare(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # under on_error: skip the record is counted, not silently put in a bucket
    res = prepare(cfg.model_copy(update={"on_error": "skip"}), tmp_path / "out", progress=False)
    assert res.stats["skipped"] == {"bad_score": 1}
    assert res.stats["total"]["examples"] == 1


def test_custom_buckets_take_any_finite_score(tokenizer_dir, nat_files, tmp_path):
    _with_score(nat_files, 7.0)
    buckets = [{"name": "high", "marker": "[H]", "min": 5.0}, {"name": "low", "marker": "[L]"}]
    cfg = _config(
        tokenizer_dir, nat_files, **{"strategy.name": "nat-fine", "strategy.buckets": buckets}
    )
    res = prepare(cfg, tmp_path / "out", progress=False)
    assert res.stats["per_class"]["high"]["examples"] == 1


def test_nan_reward_is_not_a_failure(tmp_path):
    rec = json.loads(json.dumps(NAT_TRAJ))
    rec["question"] = "q"
    rec["info"]["reward"] = float("nan")
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(
        DataError,
        match=r"t\.jsonl: line 1: field 'info.reward': cannot read a success value from nan",
    ):
        load_trajectories(path, "nat")


def test_duplicate_question_ids_with_different_text(tmp_path):
    rec = json.loads(json.dumps(NAT_TRAJ))
    traj = write_jsonl(tmp_path / "t.jsonl", [rec])
    same = write_jsonl(tmp_path / "same.jsonl", [QUESTION, QUESTION])  # exact repeats are fine
    assert load_trajectories(traj, "nat", questions=same)[0].question == QUESTION["question"]
    other = {**QUESTION, "question": "What is 3 + 3?"}
    bad = write_jsonl(tmp_path / "q.jsonl", [QUESTION, other])
    with pytest.raises(
        DataError,
        match=r"q\.jsonl: line 2: field 'question': question id 'q1' appears again with a "
        r"different question \(first at .*q\.jsonl: line 1\)",
    ):
        load_trajectories(traj, "nat", questions=bad)
    # across two files, and a differing answer
    first = write_jsonl(tmp_path / "a.jsonl", [QUESTION])
    second = write_jsonl(tmp_path / "b.jsonl", [{**QUESTION, "answer": "#### 7"}])
    with pytest.raises(
        DataError, match=r"b\.jsonl: line 1: field 'answer': .* \(first at .*a\.jsonl: line 1\)"
    ):
        load_trajectories(traj, "nat", questions=[first, second])
