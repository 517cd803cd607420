"""What the evaluated agents do: every test episode sorted into one behaviour.

Accuracy says how often an agent is right; this says what it does when it is not, which is what
the benchmark's readings turn on (does NUT imitate the failures' wrong operation? does NAT's
failure marker switch it on?). An episode of ``natscale eval`` (``episodes.jsonl``) is, in this
order:

* ``correct``: the paper's exact match;
* ``unparseable``: stopped at an assistant turn with no valid action;
* ``unfinished``: reached the turn limit without ``finish``;
* ``tool_error``: the calculator answered ``Error: ...`` at least once (an unreadable expression);
* ``no_calculation``: finished without calling the calculator;
* ``answer_slip``: the first calculation gave the gold solution's first value, the answer is
  another number;
* ``wrong_operation``: the first calculation used the gold solution's numbers in another way
  (``1196 * 26`` for ``1196 / 26``);
* ``wrong_numbers``: the first calculation used other numbers (a number copied wrong).

The gold solution's first step is the first ``<<expression=value>>`` annotation of the GSM8K-style
answer; without one, the last three are ``wrong_answer``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from natscale.agent.react import ReActParseError, parse_action

BEHAVIOURS = (
    "correct",
    "unparseable",
    "unfinished",
    "tool_error",
    "no_calculation",
    "answer_slip",
    "wrong_operation",
    "wrong_numbers",
    "wrong_answer",
)
_GOLD_STEP = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_OBSERVATION = "Observation: "


def _numbers(expression: str) -> list[str]:
    return sorted(_NUMBER.findall(expression.replace(",", "")))


def classify(episode: dict[str, Any]) -> str:
    """The behaviour of one ``episodes.jsonl`` record (see the module doc)."""
    info = episode["info"]
    if info.get("reward"):
        return "correct"
    if not info.get("finished"):
        return "unparseable" if info.get("failure") == "unparseable_action" else "unfinished"
    calls = _calls(episode)
    if any(observation.startswith("Error") for _, _, observation in calls):
        return "tool_error"
    # (expression, observation) of the first calculator call
    first = next(((arg, obs) for tool, arg, obs in calls if tool == "calculate"), None)
    if first is None:
        return "no_calculation"
    gold = _GOLD_STEP.search(episode.get("answer") or "")
    if gold is None:
        return "wrong_answer"
    if first[1] == gold[2].strip():
        return "answer_slip"
    return "wrong_operation" if _numbers(first[0]) == _numbers(gold[1]) else "wrong_numbers"


def _calls(episode: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(tool, argument, observation) of each step of an episode: ReAct turns
    (``conversations``) or native tool calls (``messages``). An observation that follows no
    call (a ReAct turn without a parseable action) has the tool ``""``."""
    out: list[tuple[str, str, str]] = []
    if "messages" in episode:
        results = {
            m.get("tool_call_id"): m["content"] for m in episode["messages"] if m["role"] == "tool"
        }
        for m in episode["messages"]:
            for c in m.get("tool_calls") or []:
                args = json.loads(c["function"]["arguments"] or "{}")
                arg = str(next(iter(args.values()), "")) if isinstance(args, dict) else ""
                out.append((c["function"]["name"], arg, results.get(c.get("id"), "").strip()))
        return out
    turns = episode["conversations"]
    for k, turn in enumerate(turns):
        if turn["role"] == "assistant":
            continue
        observation = turn["content"].removeprefix(_OBSERVATION).strip()
        try:
            tool, argument = parse_action(turns[k - 1]["content"]) if k else ("", "")
        except ReActParseError:
            tool, argument = "", ""
        out.append((tool, argument, observation))
    return out


def behaviour(episodes: Path) -> dict[str, float]:
    """The fraction of the episodes in ``episodes`` (an ``episodes.jsonl``) per behaviour."""
    counts: Counter[str] = Counter()
    with open(episodes, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                counts[classify(json.loads(line))] += 1
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name in BEHAVIOURS if counts[name]}
