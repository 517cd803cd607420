"""The committed example data is what the seeded generator makes, and it is internally consistent."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from natscale.agent.calculator import calculate
from natscale.agent.react import FINISH_OBSERVATION, parse_action
from natscale.agent.scoring import extract_gsm8k_answer, math_reward
from natscale.agent.scripted.dataset import (
    DEFAULT_SEED,
    FILES,
    TEMPERATURES,
    generate,
    render_files,
    write_dataset,
)
from natscale.agent.scripted.teacher import KINDS, MAX_TURNS

DATA_DIR = Path(__file__).resolve().parents[2] / "examples" / "math_react"


@pytest.fixture(scope="module")
def committed():
    trajectories = json.loads((DATA_DIR / "trajectories.json").read_text(encoding="utf-8"))
    lines = (DATA_DIR / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    questions = {q["id"]: q for q in map(json.loads, lines)}
    prompt = json.loads((DATA_DIR / "prompt.json").read_text(encoding="utf-8"))
    return trajectories, questions, prompt


def test_generator_reproduces_committed_files_byte_for_byte():
    rendered = render_files(generate(seed=DEFAULT_SEED))
    assert sorted(rendered) == sorted(FILES)
    for name, payload in rendered.items():
        assert payload == (DATA_DIR / name).read_bytes(), f"{name} differs from the generator"


def test_seed_changes_the_data_and_write_is_complete(tmp_path):
    a, b = generate(seed=1, num_questions=40), generate(seed=2, num_questions=40)
    assert a.trajectories != b.trajectories
    assert render_files(a) == render_files(generate(seed=1, num_questions=40))
    paths = write_dataset(a, tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(FILES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILES)  # no temp files


def test_prompt_is_the_papers_wording(committed):
    _, _, prompt = committed
    assert prompt["task"] == "math"
    assert prompt["instruction"].startswith("Solve a math problem with interleaving Thought")
    assert "(1) calculate[expression]" in prompt["instruction"]
    assert prompt["instruction"].endswith("returns the answer and finishes the task.")
    assert prompt["acknowledgement"] == "I've understood your instruction, start please."
    assert prompt["templates"] == {
        "plain": "Question: {question}",
        "success": "Question: {question}. Generate a sequence of Thought and Action steps to "
        "solve the problem correctly.",
        "failure": "Question: {question}. Generate a sequence of Thought and Action steps. "
        "But incorrectly solve the problem.",
    }


def test_size_mix_and_samples_per_question(committed):
    trajectories, questions, _ = committed
    assert 2800 <= len(trajectories) <= 3200
    assert 1200 <= len(questions) <= 1400
    kinds = Counter(t["info"]["kind"] for t in trajectories)
    assert set(kinds) == set(KINDS) and all(kinds[k] >= 100 for k in KINDS), kinds
    assert 0.35 <= kinds["success"] / len(trajectories) <= 0.45
    per_question = Counter(t["id"] for t in trajectories)
    assert set(per_question) == set(questions)
    assert max(per_question.values()) <= 3
    sources = {}
    for t in trajectories:
        assert t["source"] in TEMPERATURES
        sources.setdefault(t["id"], []).append(t["source"])
    assert all(len(s) == len(set(s)) for s in sources.values())


def test_schema_and_turn_structure(committed):
    trajectories, _, _ = committed
    for t in trajectories:
        assert list(t) == ["id", "source", "info", "conversations"]
        assert list(t["info"]) == ["reward", "pred", "gt", "finished", "kind"]
        turns = t["conversations"]
        assert turns, t["id"]
        assert len(turns) % 2 == 0
        for k, turn in enumerate(turns):
            assert list(turn) == ["role", "content", "loss"]
            assistant = k % 2 == 0
            assert turn["role"] == ("assistant" if assistant else "user")
            assert turn["loss"] is assistant
            assert turn["content"] and turn["content"] == turn["content"].strip()
            if not assistant:
                assert turn["content"].startswith("Observation: ")
        num_actions = len(turns) // 2
        assert 1 <= num_actions <= MAX_TURNS
        if not t["info"]["finished"]:
            assert num_actions == MAX_TURNS and t["info"]["pred"] is None


def test_observations_come_from_the_calculator(committed):
    trajectories, _, _ = committed
    for t in trajectories:
        turns = t["conversations"]
        for k in range(0, len(turns), 2):
            tool, arg = parse_action(turns[k]["content"])
            observation = turns[k + 1]["content"].removeprefix("Observation: ")
            if tool == "finish":
                assert observation == FINISH_OBSERVATION
                assert k == len(turns) - 2, "finish must be the last action"
                assert t["info"]["pred"] == arg
            else:
                assert tool == "calculate"
                assert observation == calculate(arg), (t["id"], arg)


def test_reward_is_the_papers_exact_match(committed):
    trajectories, questions, _ = committed
    for t in trajectories:
        info, answer = t["info"], questions[t["id"]]["answer"]
        assert info["gt"] == extract_gsm8k_answer(answer)
        assert info["reward"] == math_reward(info["pred"], answer)
        assert info["reward"] == (info["kind"] == "success")
        assert info["finished"] == (info["pred"] is not None) == (info["kind"] != "unfinished")


def test_failure_kinds_look_like_their_names(committed):
    trajectories, _questions, _ = committed
    errors = Counter()
    for t in trajectories:
        observations = [m["content"] for m in t["conversations"][1::2]]
        errors[t["info"]["kind"]] += any(o.startswith("Observation: Error:") for o in observations)
    by_kind = Counter(t["info"]["kind"] for t in trajectories)
    assert 0 < errors["bad_tool_args"] < by_kind["bad_tool_args"]  # malformed and wrong numbers
    assert errors["wrong_answer"] == 0  # correct tool calls, wrong final answer
    assert 0 < errors["success"] < by_kind["success"] / 4  # some recover from an error
    preds = [t["info"]["pred"] for t in trajectories if t["info"]["kind"] == "wrong_answer"]
    assert any(p.endswith(".0") for p in preds)  # "18.0" vs "18"
    assert any("," in p for p in preds)  # "1,200" vs "1200"


def test_questions_are_gsm8k_style_and_exercise_unicode(committed):
    _, questions, _ = committed
    for q in questions.values():
        assert list(q) == ["id", "question", "answer"]
        assert q["answer"].splitlines()[-1].startswith("#### ")
        assert "<<" in q["answer"]
    text = "".join(q["question"] for q in questions.values())
    assert "€" in text and "×" in text and "ë" in text
    assert any("," in q["answer"].splitlines()[-1] for q in questions.values())


def test_held_out_test_split_is_disjoint_from_training(committed):
    trajectories, questions, _ = committed
    lines = (DATA_DIR / "questions_test.jsonl").read_text(encoding="utf-8").splitlines()
    test = [json.loads(line) for line in lines]
    assert len(test) == 200 and len({q["id"] for q in test}) == 200
    train_texts = {q["question"] for q in questions.values()}
    assert not train_texts & {q["question"] for q in test}
    assert not {t["id"] for t in trajectories} & {q["id"] for q in test}
    for q in test:
        assert q["id"].startswith("math-test-")
        assert extract_gsm8k_answer(q["answer"]).isdigit()


def test_difficulty_and_verbosity_knobs():
    """`max_steps` bounds the gold plan (questions and test split); `verbosity=0` writes only
    the terse thoughts; both still give consistent, exact-match-labelled episodes."""

    data = generate(seed=3, num_questions=60, num_test=20, verbosity=0, max_steps=1)
    for traj in data.trajectories:
        for turn in traj["conversations"]:
            if turn["role"] == "assistant" and turn["content"].startswith("Thought:"):
                thought = turn["content"].split("\nAction:")[0]
                assert "The question asks for" not in thought  # the verbose opening never appears
    answers = [extract_gsm8k_answer(q["answer"]) for q in data.test_questions]
    assert all(a.isdigit() for a in answers)
    # every test answer takes one step: its GSM8K solution has a single <<calc>> annotation
    assert all(q["answer"].count("<<") == 1 for q in data.test_questions + data.questions)
    default = generate(seed=3, num_questions=60, num_test=20)
    assert any(q["answer"].count("<<") > 1 for q in default.questions)


def test_systematic_failures_have_one_mode_per_kind():
    """failures="systematic": every wrong answer is the problem's wrong operation, every bad tool
    call is the expression with "=" appended followed by a number of it, and the labels are the
    paper's exact match as for the varied teacher (``_trajectory`` asserts that)."""
    from natscale.agent.scripted.dataset import FAILURE_STYLES

    style = {"failures": "systematic"}
    data = generate(seed=5, num_questions=150, num_test=5, verbosity=0, **style)
    kinds = {t["info"]["kind"] for t in data.trajectories}
    assert kinds == {"success", "wrong_answer", "bad_tool_args", "unfinished"}
    for traj in data.trajectories:
        actions = [
            m["content"].split("Action: ", 1)[1]
            for m in traj["conversations"]
            if m["role"] == "assistant"
        ]
        observations = [m["content"] for m in traj["conversations"] if m["role"] == "user"][1:]
        kind = traj["info"]["kind"]
        if kind == "wrong_answer":  # correct-looking calls, no error, a wrong final number
            assert not any(o.startswith("Observation: Error") for o in observations)
            assert actions[-1].startswith("finish[") and not traj["info"]["reward"]
        if kind == "bad_tool_args":
            bad = [a for a in actions if a.endswith(" =]")]
            assert len(bad) == 1 and actions[-1].startswith("finish[")
            guess = actions[-1][len("finish[") : -1]
            assert guess in bad[0]  # a number copied from the unreadable expression
    # the wrong operation itself: on one-step problems the call holds the gold expression's
    # numbers with another operation (the gold one is the question's <<expr=value>> annotation)
    one = generate(seed=5, num_questions=150, num_test=5, verbosity=0, max_steps=1, **style)
    gold = {q["id"]: q["answer"].split("<<", 1)[1].split("=", 1)[0] for q in one.questions}
    wrong = [t for t in one.trajectories if t["info"]["kind"] == "wrong_answer"]
    assert len(wrong) > 10
    for traj in wrong:
        call = traj["conversations"][0]["content"].split("Action: calculate[", 1)[1][:-1]
        expected = gold[traj["id"]].replace(" ", "")
        assert call.replace(" ", "") != expected
        assert re.findall(r"[\d.]+", call) and sorted(re.findall(r"[\d.]+", call)) == sorted(
            re.findall(r"[\d.]+", expected)
        )  # the same numbers, so not a copying slip: the operation
    varied = generate(seed=5, num_questions=150, num_test=5, verbosity=0)
    assert varied.test_questions == data.test_questions  # the held-out split does not change
    assert any(
        m["content"].endswith("x") or " x " in m["content"]
        for t in varied.trajectories
        for m in t["conversations"]
    )  # the varied teacher's other malformations
    assert FAILURE_STYLES == ("varied", "systematic")
    with pytest.raises(ValueError, match="failures must be one of"):
        generate(seed=5, num_questions=2, failures="sometimes")
