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


def _finish_call(arguments: dict) -> Turn:
    call = {"id": "c2", "name": "finish", "arguments": arguments}
    return Turn("assistant", "", tool_calls=[call])


def test_a_finish_tool_call_is_the_prediction():
    calc = Turn(
        "assistant", "", tool_calls=[{"name": "calculate", "arguments": {"expression": "1"}}]
    )
    turns = [calc, Turn("observation", "391"), _finish_call({"answer": "391"})]
    t = Trajectory(id="t", question="17 * 23?", turns=turns, meta={"answer": "#### 391"})
    assert extract_pred(t) == "391"
    assert label(t, success="exact").success is True and label(t, success="em").success is True
    assert label(t, success="f1").score == 1.0
    # the argument is named as the trajectory's finish schema names it (tools.schemas renames)
    t.turns[-1] = _finish_call({"result": 391})
    assert extract_pred(t) is None
    t.tools = [
        {
            "type": "function",
            "function": {
                "name": "finish",
                "parameters": {"type": "object", "properties": {"result": {"type": "number"}}},
            },
        }
    ]
    assert extract_pred(t) == "391"  # not a string: its JSON text, as natscale eval's loop
    # a finish call with other arguments gives no answer (the loop answers it with an error)
    t.turns[-1] = _finish_call({"result": 391, "why": "x"})
    assert extract_pred(t) is None


def _tool_call_episode(pred: str | None, finished: bool) -> dict:
    """A natscale eval episode with native tool calls, as ``natscale.eval.episodes`` writes it."""
    from natscale.agent.loop import Episode, Question
    from natscale.agent.tool_calls import BUILTIN_SCHEMAS
    from natscale.data.render.messages import Message
    from natscale.eval.episodes import episode_record

    question = Question("math-00017", "What is 17 * 23?", "17 * 23 = 391 #### 391")
    calc = {"id": "call01000", "name": "calculate", "arguments": {"expression": "17 * 23"}}
    history = [
        {"role": "assistant", "content": "", "tool_calls": [calc], "loss": True},
        {"role": "tool", "tool_call_id": "call01000", "name": "calculate", "content": "391"},
    ]
    if finished:
        done = {"id": "call02000", "name": "finish", "arguments": {"answer": pred}}
        history.append({"role": "assistant", "content": "", "tool_calls": [done], "loss": True})
    ep = Episode(question, 0, history=history, turns=len(history) // 2 + 1, pred=pred)
    schemas = [BUILTIN_SCHEMAS["calculate"], BUILTIN_SCHEMAS["finish"]]
    prompt = [Message("user", question.question)]
    return episode_record(
        ep, "math", temperature=0.0, marker="success", tool_calls=(prompt, schemas)
    )


@pytest.mark.parametrize("rule", ["exact", "em", "f1"])
def test_eval_tool_call_episodes_read_as_openai_label_right(tmp_path, rule):
    """docs/eval.md's prepare round trip: a natscale eval episode with native tool calls read as
    format: openai is scored on its answer (info.pred, or its finish call) and an unfinished one
    (info.finished: false) is unfinished."""
    from natscale.data.formats import load_trajectories

    path = tmp_path / "episodes.jsonl"
    records = [_tool_call_episode("391", True), _tool_call_episode(None, False)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    done, cut = load_trajectories(path, "openai", success_field="info.reward")
    assert done.finished and not cut.finished
    assert label(done, success=rule).success is True and label(done, score="f1").score == 1.0
    assert label(cut, success=rule).success is False
    # without info.pred the finish call's answer is the prediction
    del records[0]["info"]["pred"]
    path.write_text(json.dumps(records[0]) + "\n")
    (done,) = load_trajectories(path, "openai")
    assert done.finished and label(done, success=rule).success is True


def test_eval_tool_call_episodes_prepare_nat_fine_and_skip_unfinished(tokenizer_dir, tmp_path):
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    path = tmp_path / "episodes.jsonl"
    records = [_tool_call_episode("391", True), _tool_call_episode(None, False)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = PrepareConfig.model_validate(
        {
            "sources": [{"format": "openai", "paths": [str(path)], "success_field": "info.reward"}],
            "outcome": {"unfinished": "skip"},
            "strategy": {"name": "nat-fine"},
            "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
        }
    )
    result = prepare(cfg, tmp_path / "out", progress=False)
    examples = {k: v["examples"] for k, v in result.stats["per_class"].items()}
    assert examples["correct"] == 1 and sum(examples.values()) == 1
    assert result.stats["skipped"] == {"unfinished": 1}


def test_a_top_level_finished_false_of_a_converted_file_is_unfinished(tokenizer_dir, tmp_path):
    """`convert data --to openai|sharegpt` writes an unfinished NAT episode as `finished: false`
    at the top of its record; prepare's outcome.unfinished: skip kept it."""
    from natscale.config.prepare import PrepareConfig
    from natscale.data.formats import load_trajectories
    from natscale.data.prepare import prepare

    path = tmp_path / "chat.jsonl"
    chat = [{"role": "user", "content": "What is 17 * 23?"}, {"role": "assistant", "content": "?"}]
    records = [
        {"id": "a", "messages": chat, "reward": False},
        {"id": "b", "messages": chat, "reward": False, "finished": False},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    done, cut = load_trajectories(path, "openai", success_field="reward")
    assert done.finished and not cut.finished
    cfg = PrepareConfig.model_validate(
        {
            "sources": [{"format": "openai", "paths": [str(path)], "success_field": "reward"}],
            "outcome": {"unfinished": "skip"},
            "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
        }
    )
    result = prepare(cfg, tmp_path / "out", progress=False)
    assert result.stats["skipped"] == {"unfinished": 1}
    cfg = cfg.model_copy(update={"outcome": cfg.outcome.model_copy(update={"unfinished": "error"})})
    with pytest.raises(DataError, match=r"unfinished \(finished is false\)"):
        prepare(cfg, tmp_path / "out2", progress=False)
