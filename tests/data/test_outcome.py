import json

import pytest

from natscale.data.errors import DataError
from natscale.data.outcome import (
    exact_match,
    extract_gold,
    extract_pred,
    f1_score,
    label,
    normalize_answer,
)
from natscale.data.trajectory import Outcome, Trajectory, Turn


def _traj(pred_text: str, answer: str = "", **meta) -> Trajectory:
    turns = [Turn("assistant", f"Thought: so.\nAction: finish[{pred_text}]")]
    return Trajectory(id="t", question="q", turns=turns, meta={"answer": answer, **meta})


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Nevada.", "Nevada") and not exact_match(None, "x")
    assert exact_match("Yes", "True") and exact_match("no", "false")
    assert f1_score("Roman Catholic church", "Roman Catholic") == pytest.approx(0.8)
    assert f1_score("yes", "no") == 0.0 and f1_score(None, "a") == 0.0
    assert f1_score("a b", "c d") == 0.0


def test_gold_and_prediction_extraction():
    assert extract_gold("so 1,000 + 234\n#### 1,234") == "1234"
    assert extract_gold(" Paris ") == "Paris"
    t = _traj("42")
    t.turns.append(Turn("observation", "Observation: Episode finished"))
    assert extract_pred(t) == "42"
    assert (
        extract_pred(Trajectory(id="x", question="q", turns=[Turn("assistant", "no action")]))
        is None
    )


def test_label_rules():
    t = _traj("18.0", "#### 18")
    assert label(t, success="exact").success is False  # the paper's GSM8K rule: "18.0" != "18"
    assert label(_traj("18", "#### 18"), success="exact").success is True
    hotpot = _traj("the Roman Catholic", "Roman Catholic church")
    out = label(hotpot, success="em", score="f1")
    assert out.success is False and out.score == pytest.approx(0.8)
    assert label(hotpot, success="f1", f1_threshold=0.5).success is True
    # explicit field wins and keeps the source's score; auto score falls back to F1
    t = _traj("x", "y")
    t.outcome = Outcome(success=True, score=0.3, reward=1)
    assert label(t).success is True and label(t).score == 0.3
    t.outcome = Outcome(success=True)
    assert label(t).score == 0.0
    # a recorded prediction wins over the parsed finish[]
    assert label(_traj("7", "#### 6", pred="6"), success="exact").success is True
    # the last finish[] counts
    t = _traj("5", "#### 6")
    t.turns.append(Turn("assistant", "Thought: no, 6.\nAction: finish[6]"))
    assert extract_pred(t) == "6" and label(t, success="exact").success is True
    # without an answer the source's "gt" is the gold
    assert label(_traj("6", gt="6"), success="exact").success is True
    assert label(_traj("5", gt="6"), success="exact").success is False
    # the F1 threshold is inclusive: the default 1.0 accepts an exact answer
    assert label(_traj("Roman Catholic", "Roman Catholic"), success="f1").success is True
    # score: none drops the source's score
    t = _traj("x", "y")
    t.outcome = Outcome(success=True, score=0.3)
    assert label(t, score="none").score is None and label(t, score="field").score == 0.3


def test_label_errors_name_the_problem():
    with pytest.raises(DataError, match="has no success value") as exc:
        label(_traj("1"), success="field")
    assert exc.value.reason == "no_outcome"
    with pytest.raises(DataError, match="no gold answer") as exc:
        label(_traj("1"), success="em")
    assert exc.value.reason == "no_gold"


@pytest.mark.parametrize(
    "fmt, record, options, field",
    [
        ("nat", {"id": "q1", "question": "1+1?", "info": {"pred": "2"}}, {}, "info.reward"),
        ("openai", {"id": "q1"}, {"success_field": "meta.solved"}, "meta.solved"),
        ("openai", {"id": "q1"}, {}, "reward"),
    ],
)
def test_no_success_value_names_the_source_success_field(
    tokenizer_dir, tmp_path, fmt, record, options, field
):
    """The error names the field the source reads success from (nat: info.reward by default,
    or the source's success_field), not always 'reward'."""
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    if fmt == "nat":
        record["conversations"] = [{"role": "assistant", "content": "Action: finish[2]"}]
    else:
        record["messages"] = [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "Action: finish[2]"},
        ]
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record) + "\n")
    cfg = PrepareConfig.model_validate(
        {
            "sources": [{"format": fmt, "paths": [str(path)], **options}],
            "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
        }
    )
    with pytest.raises(DataError, match="has no success value") as exc:
        prepare(cfg, tmp_path / "out", progress=False)
    assert exc.value.reason == "no_outcome" and exc.value.field == field
    assert f"t.jsonl: line 1: field '{field}': trajectory 'q1'" in str(exc.value)
