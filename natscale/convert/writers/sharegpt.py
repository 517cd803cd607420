"""ShareGPT and AgentInstruct writers: ``conversations: [{from, value, loss}]``.

- ``sharegpt``: ``[system], human question, turns`` (read with ``question_turn=0``); the
  instruction joins the system prompt.
- ``agentinstruct``: ``human instruction, [gpt acknowledgement], human question, turns`` (read
  with ``question_turn=1``), lossless.

Turns: assistant -> ``gpt`` (its tool calls follow as one ``function_call`` turn holding the calls
as JSON, LLaMA-Factory style), observation -> ``observation``, user -> ``human``, system ->
``system``. Every turn carries its ``loss`` flag.
"""

from __future__ import annotations

import json
from typing import Any

from natscale.convert.writers.common import (
    Notes,
    extra_fields,
    outcome_fields,
    system_with_instruction,
)
from natscale.data.trajectory import Trajectory

FROM = {"assistant": "gpt", "observation": "observation", "user": "human", "system": "system"}


def _turns(traj: Trajectory, notes: Notes) -> list[dict[str, Any]]:
    out = []
    for turn in traj.turns:
        if turn.content or not turn.tool_calls:
            out.append({"from": FROM[turn.role], "value": turn.content, "loss": bool(turn.train)})
        if turn.tool_calls:
            calls = [{"name": c["name"], "arguments": c.get("arguments")} for c in turn.tool_calls]
            value = json.dumps(calls[0] if len(calls) == 1 else calls)
            out.append({"from": "function_call", "value": value, "loss": bool(turn.train)})
            notes["tool calls written as function_call turns"] += 1
    return out


def _record(traj: Trajectory, prompt: list[dict[str, Any]], notes: Notes) -> dict[str, Any]:
    question = {"from": "human", "value": traj.question, "loss": False}
    record = {"id": traj.id, "conversations": [*prompt, question, *_turns(traj, notes)]}
    record.update(outcome_fields(traj))
    record.update(extra_fields(traj, set(record)))
    return record


def sharegpt_record(traj: Trajectory, notes: Notes) -> dict[str, Any]:
    system = system_with_instruction(traj, notes)
    prompt = [{"from": "system", "value": system, "loss": False}] if system else []
    return _record(traj, prompt, notes)


def agentinstruct_record(traj: Trajectory, notes: Notes) -> dict[str, Any]:
    prompt = [{"from": "system", "value": traj.system, "loss": False}] if traj.system else []
    prompt.append({"from": "human", "value": traj.instruction, "loss": False})
    if traj.acknowledgement is not None:
        prompt.append({"from": "gpt", "value": traj.acknowledgement, "loss": False})
    return _record(traj, prompt, notes)
