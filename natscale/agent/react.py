"""ReAct steps the NAT paper's way: ``Thought: ...\\nAction: tool[argument]`` / ``Observation: ...``.

An assistant turn holds one thought and one action::

    Thought: Tony skips twice as fast as Bruce.
    Action: calculate[2 * 1]

and the environment answers with a user turn ``Observation: 2``. A ``finish[answer]`` action ends
the episode; its observation is ``Episode finished``.

Parsing follows the paper's code (``data/utils.py``): the turn is split on ``"\\nAction: "`` (the
first action wins); a turn that starts with ``"Action: "`` has an empty thought; the tool name is
the text before the first ``[`` and the argument runs to the closing ``]``. Unlike the paper, the
closing ``]`` is required (the paper drops the last character whatever it is) and the argument is
everything between the first ``[`` and that final ``]``, so brackets inside it survive.

A reasoning model's turn (``<think>...</think>`` then the step) is parsed after its last
``</think>``: an ``Action:`` line the model wrote while thinking is not its action. The
reasoning is part of the thought.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THOUGHT_PREFIX = "Thought: "
ACTION_PREFIX = "Action: "
OBSERVATION_PREFIX = "Observation: "
FINISH_OBSERVATION = "Episode finished"
CALCULATE = "calculate"
SEARCH = "search"
FINISH = "finish"
THINK_END = "</think>"  # a reasoning model's turn: its step follows the last one

# Line starts of a ReAct transcript written as one text (FireAct / Alpaca ``output``):
# ``Observation:`` / ``Observation 2:`` opens an observation, ``Thought``/``Action`` agent text.
OBSERVATION_LINE = re.compile(r"^Observation(?:\s*\d+)?\s*:")
AGENT_LINE = re.compile(r"^(?:Thought|Action)(?:\s*\d+)?\s*:")
_FINISH_ANYWHERE = re.compile(r"finish\[(.*)\]", re.DOTALL)


class ReActParseError(ValueError):
    """An assistant turn that has no parseable ``Action: tool[argument]``."""


@dataclass(frozen=True)
class ReActStep:
    """One parsed assistant turn."""

    thought: str  # without the "Thought: " prefix; "" when the turn has no thought
    tool: str
    argument: str


def format_action(tool: str, argument: str) -> str:
    """``calculate``, ``2 * 1`` -> ``calculate[2 * 1]``."""
    if not tool or "[" in tool:
        raise ValueError(f"invalid tool name {tool!r}")
    return f"{tool}[{argument}]"


def format_step(thought: str | None, tool: str, argument: str) -> str:
    """An assistant turn: ``Thought: {thought}\\nAction: {tool}[{argument}]``.

    With ``thought=None`` the turn is the action line alone (the paper's parser accepts both).
    """
    action = ACTION_PREFIX + format_action(tool, argument)
    if thought is None:
        return action
    if "\nAction: " in thought:
        raise ValueError(f"a thought must not contain a line starting 'Action: ': {thought!r}")
    return f"{THOUGHT_PREFIX}{thought}\n{action}"


def format_observation(observation: str) -> str:
    """A user turn carrying a tool result: ``Observation: {observation}``."""
    return OBSERVATION_PREFIX + observation


def split_thought_action(text: str) -> tuple[str, str]:
    """Split an assistant turn into (thought, action text), the paper's way.

    The thought keeps its ``Thought:`` prefix if it had one; the action text has no ``Action:``
    prefix. Raises :class:`ReActParseError` if the turn has no action.
    """
    reasoning, end, stripped = text.strip().rpartition(THINK_END)
    reasoning += end
    stripped = stripped.strip()
    if stripped.startswith(ACTION_PREFIX):  # no thought; a later action line is not the action
        return reasoning, stripped[len(ACTION_PREFIX) :].split("\nAction: ", 1)[0]
    if "\nAction: " in stripped:
        thought, action = stripped.split("\nAction: ")[:2]
        return f"{reasoning}\n{thought}" if reasoning else thought, action
    raise ReActParseError(
        f"no action in assistant turn {_preview(text)}: expected a line 'Action: tool[argument]'"
    )


def parse_action(text: str) -> tuple[str, str]:
    """Return (tool, argument) of an assistant turn, e.g. ``("calculate", "2 * 1")``.

    ``text`` is a whole turn (``Thought: ...\\nAction: calculate[2 * 1]``) or just its action line
    (``Action: calculate[2 * 1]``). Raises :class:`ReActParseError` naming what is missing.
    """
    step = parse_step(text)
    return step.tool, step.argument


def parse_step(text: str) -> ReActStep:
    """Parse an assistant turn into its thought, tool name and argument (see :func:`parse_action`)."""
    thought, action = split_thought_action(text)
    action = action.strip()
    if "[" not in action:
        raise ReActParseError(
            f"action {_preview(action)} has no '[': expected 'tool[argument]', e.g. 'calculate[2 * 3]'"
        )
    if not action.endswith("]"):
        raise ReActParseError(
            f"action {_preview(action)} does not end with ']': expected 'tool[argument]'"
        )
    tool, argument = action[:-1].split("[", 1)
    tool = tool.strip()
    if not tool:
        raise ReActParseError(f"action {_preview(action)} has no tool name before '['")
    if thought.startswith(THOUGHT_PREFIX):
        thought = thought[len(THOUGHT_PREFIX) :]
    return ReActStep(thought=thought.strip(), tool=tool, argument=argument)


def finish_argument(text: str) -> str | None:
    """The argument of a ``finish[...]`` anywhere in ``text`` (stripped), else None.

    Lenient on purpose (for labelling recorded data whose turns may not parse as one step): it
    runs from the first ``finish[`` to the last ``]``, after the last ``</think>``.
    """
    match = _FINISH_ANYWHERE.search(text.rpartition(THINK_END)[2])
    return match.group(1).strip() if match else None


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
