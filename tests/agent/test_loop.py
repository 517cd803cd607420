"""The rollout loop with the real calculator: failure kinds, the prediction, token counts, batching."""

from __future__ import annotations

from natscale.agent.loop import Generation, Question, play_script, rollout
from natscale.agent.tools import build_tools

TOOLS = build_tools(["calculate"])


def test_unknown_tool_is_its_own_failure():
    ep = play_script(Question("q", "2 + 2?"), ["Action: search[2 + 2]"], TOOLS, max_turns=7)
    assert ep.done and ep.failure == "unknown_tool" and ep.pred is None
    assert ep.history[-1]["content"].startswith("Observation: Error: unknown tool 'search'")
    ep = play_script(Question("q", "2 + 2?"), ["I think it is 4."], TOOLS, max_turns=7)
    assert ep.failure == "unparseable_action"


def test_finish_answer_is_stripped_and_tool_turns_are_observed():
    turns = ["Thought: add.\nAction: calculate[2 + 2]", "Action: finish[ 4 ]"]
    ep = play_script(Question("q", "2 + 2?"), turns, TOOLS, max_turns=7)
    assert ep.done and ep.failure is None and ep.pred == "4" and ep.turns == 2
    assert [m["content"] for m in ep.history if m["role"] == "user"] == [
        "Observation: 4",
        "Observation: Episode finished",
    ]


def test_rollout_fills_batches_and_counts_generated_tokens():
    asked: list[int] = []

    def generate(episodes):
        asked.append(len(episodes))
        return [
            Generation("Action: calculate[1 + 1]" if ep.turns == 0 else "Action: finish[2]", 5)
            for ep in episodes
        ]

    work = [(Question(f"q{i}", "1 + 1?"), 0) for i in range(5)]
    done = list(rollout(work, generate, TOOLS, batch_size=3, max_turns=7))
    assert sorted(ep.question.id for ep in done) == [f"q{i}" for i in range(5)]
    assert asked == [3, 3, 2, 2]  # refilled as episodes end
    assert all(ep.generated_tokens == 10 and ep.pred == "2" for ep in done)
