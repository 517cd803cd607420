import pytest

from natscale.agent.react import (
    ReActParseError,
    finish_argument,
    format_observation,
    format_step,
    parse_action,
    parse_step,
)
from natscale.agent.scoring import extract_gsm8k_answer, math_reward


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thought: Tony is twice as fast.\nAction: calculate[2 * 1]", ("calculate", "2 * 1")),
        ("Action: finish[4]", ("finish", "4")),
        ("  Thought: done.\nAction: finish[18]  \n", ("finish", "18")),
        ("Thought: a\nb\nAction: calculate[(1 + 2) * 3]", ("calculate", "(1 + 2) * 3")),
        ("Thought: x\nAction: calculate[[1 + 2]]", ("calculate", "[1 + 2]")),
        ("Thought: x\nAction: finish[]", ("finish", "")),
        ("Thought: x\nAction: calculate[1]\nAction: finish[2]", ("calculate", "1")),
        ("Action: calculate[1]\nAction: finish[2]", ("calculate", "1")),
        ("Thought: x\nAction: calculate[4 × 3]", ("calculate", "4 × 3")),
    ],
)
def test_parse_action(text, expected):
    assert parse_action(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Thought: I am thinking.", "no action"),
        ("", "no action"),
        ("Thought: x\nAction: calculate 2 * 1", "has no '['"),
        ("Thought: x\nAction: calculate[2 * 1", "does not end with ']'"),
        ("Thought: x\nAction: calculate[2]\nObservation: 2", "does not end with ']'"),
        ("Thought: x\nAction: [2 * 1]", "no tool name"),
    ],
)
def test_parse_action_errors(text, message):
    with pytest.raises(ReActParseError) as info:
        parse_action(text)
    assert message in str(info.value)


def test_format_then_parse_round_trip():
    turn = format_step("Bruce skips at 1 mile per hour.", "calculate", "2 * 1")
    assert turn == "Thought: Bruce skips at 1 mile per hour.\nAction: calculate[2 * 1]"
    step = parse_step(turn)
    assert (step.thought, step.tool, step.argument) == (
        "Bruce skips at 1 mile per hour.",
        "calculate",
        "2 * 1",
    )
    assert format_step(None, "finish", "4") == "Action: finish[4]"
    assert parse_step("Action: finish[4]").thought == ""
    # the first action wins without a thought too, and is not taken for one
    step = parse_step("Action: calculate[3 * 4]\nAction: finish[12]")
    assert (step.thought, step.tool, step.argument) == ("", "calculate", "3 * 4")
    assert format_observation("2/3") == "Observation: 2/3"


def test_finish_argument_is_lenient_for_labelling():
    """From the first ``finish[`` to the last ``]``, across lines, stripped."""
    assert finish_argument("Thought: x\nAction: finish[ [1, 2] ]  ") == "[1, 2]"
    assert finish_argument("Action: finish[two\nlines]\nObservation: ok") == "two\nlines"
    assert finish_argument("Action: finish[4") is None
    assert finish_argument("Action: calculate[4]") is None


def test_a_reasoning_models_step_follows_its_thinking():
    """An action written while thinking is not the turn's action; the reasoning is thought."""
    turn = "<think>\nMaybe:\nAction: finish[5]\nNo, compute.\n</think>\n\nAction: calculate[2 * 3]"
    step = parse_step(turn)
    assert (step.tool, step.argument) == ("calculate", "2 * 3")
    assert step.thought == "<think>\nMaybe:\nAction: finish[5]\nNo, compute.\n</think>"
    turn = "<think>Sure.</think>\nThought: multiply.\nAction: calculate[2 * 3]"
    assert parse_step(turn).thought == "<think>Sure.</think>\nThought: multiply."
    assert finish_argument("<think>finish[5] is wrong</think>Action: finish[6]") == "6"
    assert finish_argument("<think>finish[5]?</think>Action: calculate[6]") is None
    with pytest.raises(ReActParseError, match="no action"):
        parse_step("<think>\nAction: finish[5]\n</think>\n\nI am not sure.")


def test_format_step_rejects_ambiguous_input():
    with pytest.raises(ValueError):
        format_step("a\nAction: b", "calculate", "1")
    with pytest.raises(ValueError):
        format_step("a", "calc[", "1")


def test_math_reward_is_exact_match_after_removing_commas():
    gold = "He pays 1,200 dollars.\n#### 1,200"
    assert extract_gsm8k_answer(gold) == "1200"
    assert math_reward("1200", gold)
    assert not math_reward("1,200", gold)
    assert not math_reward("1200.0", gold)
    assert not math_reward(None, gold)
    assert math_reward("-3", "#### -3")
    with pytest.raises(ValueError, match="####"):
        extract_gsm8k_answer("no marker here")
