"""``convert data --tool-calls``: ReAct text turns as native tool calls."""

from __future__ import annotations

import json

from natscale.convert.trajectories import convert_trajectories
from natscale.data.formats import load_trajectories
from natscale.data.formats.writing import Notes
from natscale.data.react_calls import react_to_tool_calls
from natscale.data.trajectory import Outcome, Trajectory, Turn


def _traj(tid: str, *turns: tuple[str, str]) -> Trajectory:
    return Trajectory(tid, "What is 2 + 3?", [Turn(r, c) for r, c in turns], outcome=Outcome(True))


def test_turns_calls_results_and_what_stays_text():
    lookup = _traj(
        "a",
        ("assistant", "Thought: look it up.\nAction: lookup[2 + 3]"),
        ("observation", "Observation: 5"),
        ("assistant", "I think it is 5."),  # no action: stays text
        ("observation", "Observation: Error: no action"),
        ("assistant", "Action: finish[5]"),
        ("observation", "Observation: Episode finished"),
    )
    called = Trajectory("b", "q", [Turn("assistant", "", tool_calls=[{"name": "x"}])])
    notes = Notes()
    out = react_to_tool_calls([lookup, called], notes)
    turns = out[0].turns
    assert turns[0] == Turn(
        "assistant",
        "look it up.",
        True,
        [{"id": "call01000", "name": "lookup", "arguments": {"input": "2 + 3"}}],
    )
    assert turns[1] == Turn("observation", "5", False, name="lookup")
    assert turns[2].content == "I think it is 5." and not turns[2].tool_calls
    assert turns[3] == Turn("user", "Observation: Error: no action", False)
    assert turns[4].content == "" and turns[4].tool_calls[0]["id"] == "call03000"
    assert turns[4].tool_calls[0]["arguments"] == {"answer": "5"}
    assert len(turns) == 5  # finish's "Episode finished" is dropped
    assert [t["function"]["name"] for t in out[0].tools] == ["lookup", "finish"]
    assert out[0].tools[0]["function"]["parameters"]["required"] == ["input"]
    assert out[1] is called
    assert notes["assistant turns without a parseable action kept as text"] == 1
    assert notes["trajectories with tool calls already, left as they are"] == 1
    # FireAct's and alpaca's last observation carries the reward: dropped too, not a tool result
    fireact = _traj(
        "c",
        ("assistant", "Action: finish[5]"),
        ("observation", "Observation: Episode finished, reward = True"),
    )
    assert len(react_to_tool_calls([fireact], Notes())[0].turns) == 1


def test_converted_files_load_as_tool_call_data(tmp_path):
    src = tmp_path / "react.jsonl"
    rec = {
        "id": "q1",
        "question": "What is 6 * 7?",
        "info": {"reward": True},
        "conversations": [
            {"role": "assistant", "content": "Thought: multiply.\nAction: calculate[6 * 7]"},
            {"role": "user", "content": "Observation: 42"},
            {"role": "assistant", "content": "Thought: done.\nAction: finish[42]"},
            {"role": "user", "content": "Observation: Episode finished"},
        ],
    }
    src.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "calls.jsonl"
    convert_trajectories(src, out, src="nat", dst="openai", tool_calls=True)
    (traj,) = load_trajectories(out, "openai")
    assert [t.role for t in traj.turns] == ["assistant", "observation", "assistant"]
    assert traj.turns[0].tool_calls[0]["arguments"] == {"expression": "6 * 7"}
    assert [t["function"]["name"] for t in traj.tools] == ["calculate", "finish"]
    assert traj.outcome.success is True
    share = tmp_path / "calls.sharegpt.jsonl"
    convert_trajectories(src, share, src="nat", dst="sharegpt", tool_calls=True)
    (again,) = load_trajectories(share, "sharegpt")
    assert again.tools == traj.tools and again.turns[2].tool_calls[0]["name"] == "finish"


FIREACT_STEPS = (
    "Thought: I need to search for when the linguist Grassmann was born.\n"
    "Action: search[Grassmann birth year]\n"
    "Observation: April 15, 1809\n"
    "Thought: I have found the answer.\n"
    "Action: finish[1809]\n"
    "Observation: Episode finished, reward = True\n"
)
FIREACT_QUESTION = "Grassmann's law is named after a linguist born in which year ?"


def _fireact_gpt_record() -> dict:
    """FireAct's gpt_format: OpenAI messages whose observations are user messages."""
    steps = FIREACT_STEPS.strip().split("\n")
    pairs = [steps[i : i + 3] for i in range(0, len(steps), 3)]
    messages = [{"role": "user", "content": FIREACT_QUESTION}]
    for thought, action, observation in pairs:
        messages.append({"role": "assistant", "content": f"{thought}\n{action}"})
        messages.append({"role": "user", "content": observation})
    return {"messages": messages}


def test_fireact_gpt_format_user_observations_become_tool_results(tmp_path):
    """A user 'Observation: ...' right after an action is that call's result, as the alpaca
    form's observation is; the finish observation is dropped."""
    gpt = tmp_path / "fireact_gpt.jsonl"
    gpt.write_text(json.dumps(_fireact_gpt_record()) + "\n")
    alpaca = tmp_path / "fireact.json"
    alpaca.write_text(
        json.dumps([{"instruction": FIREACT_QUESTION, "input": "", "output": FIREACT_STEPS}])
    )
    want = load_trajectories(alpaca, "fireact", native_tools=["search"])[0]
    got = load_trajectories(gpt, "openai", native_tools=["search"])[0]
    assert [t.role for t in got.turns] == ["assistant", "observation", "assistant"]
    assert got.turns == want.turns and got.tools == want.tools
    assert got.turns[1] == Turn("observation", "April 15, 1809", False, name="search")
    # convert data --from openai --to openai --tool-calls writes the same
    out = tmp_path / "converted.jsonl"
    convert_trajectories(gpt, out, src="openai", dst="openai", tool_calls=True)
    messages = json.loads(out.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[2]["content"] == "April 15, 1809" and messages[2]["tool_call_id"] == "call01000"


def test_user_observation_text_without_a_call_stays_a_user_turn():
    chat = _traj(
        "d",
        ("assistant", "What did you see?"),  # no action
        ("user", "Observation: a bird"),
        ("assistant", "Thought: check.\nAction: finish[bird]"),
        ("user", "Thanks"),
        ("user", "Observation: it flew away"),  # not right after the action
    )
    turns = react_to_tool_calls([chat], Notes())[0].turns
    assert turns[1] == Turn("user", "Observation: a bird", False)
    assert turns[3:] == [
        Turn("user", "Thanks", False),
        Turn("user", "Observation: it flew away", False),
    ]
