"""ReAct text turns as native tool calls: a prepare source's ``native_tools``, and
``natscale convert data ... --tool-calls``.

The paper's agents write ``Thought: ...\nAction: tool[argument]`` and read ``Observation: ...``;
agents with native tool calls write a structured call and read a ``tool`` message. This turns the
one into the other, the way ``natscale eval``'s ``loop.protocol: tool_calls`` runs an episode, so
data collected in ReAct text trains a tool-calling agent that the eval then runs:

- an assistant turn that parses (``natscale.agent.react``) becomes its thought as text plus one
  call, ``{"name": tool, "arguments": {parameter: argument}}``, the parameter being the built-in
  tool's (``calculate(expression)``, ``search(query)``, ``finish(answer)``) or ``input`` for
  another tool; its id is the eval's (``call01000`` for the first turn's call);
- the observation after it becomes that call's result (``Observation: `` removed, the tool
  named); ``finish``'s ``Episode finished`` is dropped (the eval writes none). A user turn that
  starts with ``Observation:`` right after such a turn is its observation too: FireAct's
  ``gpt_format`` (OpenAI messages) gives observations as user messages. A user turn anywhere
  else stays a user turn, whatever it starts with;
- a turn that does not parse stays text, and the observation after it (the error the agent was
  shown) a user turn: the agent did write that;
- the trajectory offers tools: the ones named (``native_tools``), or for a converted file those
  its trajectories call; built-ins with their schemas, others with a one-string ``input``,
  ``finish`` last. A call of a tool not offered stays a call (the agent did make it).

The task instruction is kept as it is; the paper's describes the ReAct action syntax, so a task
prompt written for tool calls suits the converted data better.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from natscale.agent.react import (
    FINISH,
    FINISH_OBSERVATION,
    OBSERVATION_LINE,
    ReActParseError,
    parse_step,
)
from natscale.agent.tool_calls import BUILTIN_SCHEMAS, call_id, single_parameter
from natscale.data.formats.writing import Notes
from natscale.data.trajectory import Trajectory, Turn

OTHER_PARAMETER = "input"
LEFT_AS_THEY_ARE = "trajectories with tool calls already, left as they are"


def _parameter(tool: str) -> str:
    schema = BUILTIN_SCHEMAS.get(tool)
    return single_parameter(schema) if schema else OTHER_PARAMETER


def _schema(tool: str) -> dict[str, Any]:
    if tool in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[tool]
    return {
        "type": "function",
        "function": {
            "name": tool,
            "description": f"The {tool} tool.",
            "parameters": {
                "type": "object",
                "properties": {OTHER_PARAMETER: {"type": "string"}},
                "required": [OTHER_PARAMETER],
            },
        },
    }


def _observation_text(turn: Turn) -> str:
    match = OBSERVATION_LINE.match(turn.content)
    return turn.content[match.end() :].strip() if match else turn.content


def _is_observation(turn: Turn) -> bool:
    """An observation turn, or a user turn written as one (``Observation: ...``, FireAct's
    ``gpt_format``); the caller asks only right after a turn that made a call."""
    return turn.role == "observation" or (
        turn.role == "user" and OBSERVATION_LINE.match(turn.content) is not None
    )


def tool_call_turns(traj: Trajectory, notes: Notes) -> tuple[list[Turn], list[str]]:
    """``traj``'s turns with its ReAct steps as calls, and the tools it calls, in order."""
    out: list[Turn] = []
    used: dict[str, None] = {}
    called: str | None = None  # the tool the last assistant turn called
    assistant = 0
    for turn in traj.turns:
        if turn.role == "assistant" and not turn.tool_calls:
            assistant += 1
            try:
                step = parse_step(turn.content)
            except ReActParseError:
                notes["assistant turns without a parseable action kept as text"] += 1
                out.append(turn)
                called = None
                continue
            used.setdefault(step.tool, None)
            call = {
                "id": call_id(assistant, 0),
                "name": step.tool,
                "arguments": {_parameter(step.tool): step.argument.strip()},
            }
            out.append(Turn("assistant", step.thought, turn.train, [call]))
            called = step.tool
        elif called is not None and _is_observation(turn):
            text = _observation_text(turn)
            # "Episode finished" (FireAct's and alpaca's add ", reward = True"): no tool result
            if not (called == FINISH and text.startswith(FINISH_OBSERVATION)):
                out.append(Turn("observation", text, turn.train, name=called))
            called = None
        elif turn.role == "observation":
            notes["observations after a turn without a call became user turns"] += 1
            out.append(Turn("user", turn.content, turn.train))
        else:
            out.append(turn)
            called = None
    return out, list(used)


def offered_tools(names: list[str]) -> list[dict[str, Any]]:
    """The schemas of ``names``: built-ins first, then the others by name, ``finish`` last
    (added when missing)."""
    ordered = sorted(
        set(names) | {FINISH}, key=lambda n: (n == FINISH, n not in BUILTIN_SCHEMAS, n)
    )
    return [_schema(n) for n in ordered]


def _has_calls(traj: Trajectory) -> bool:
    return bool(traj.tools) or any(t.tool_calls for t in traj.turns)


def with_tool_calls(traj: Trajectory, tools: list[dict[str, Any]], notes: Notes) -> Trajectory:
    """``traj`` with native tool calls, offering ``tools`` (a trajectory that has calls or tools
    already is returned as it is)."""
    if _has_calls(traj):
        notes[LEFT_AS_THEY_ARE] += 1
        return traj
    return dataclasses.replace(traj, turns=tool_call_turns(traj, notes)[0], tools=tools)


def react_to_tool_calls(trajs: list[Trajectory], notes: Notes) -> list[Trajectory]:
    """A file's trajectories with native tool calls, each offering the tools any of them calls."""
    converted = [None if _has_calls(t) else tool_call_turns(t, notes) for t in trajs]
    if None in converted:
        notes[LEFT_AS_THEY_ARE] += converted.count(None)
    tools = offered_tools([name for c in converted if c for name in c[1]])
    return [
        traj if c is None else dataclasses.replace(traj, turns=c[0], tools=tools)
        for traj, c in zip(trajs, converted, strict=True)
    ]
