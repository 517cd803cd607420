"""OpenAI chat writer: ``messages`` with ``tool_calls`` and ``tool`` results.

``[system], user question, turns``; the instruction joins the system prompt. Assistant tool calls
stay structured (``{"id", "type": "function", "function": {"name", "arguments": JSON string}}``);
observations become ``tool`` messages (with the tool ``name`` and the id of the call they answer
when known). Training flags follow OpenAI fine-tuning: ``weight: 0`` on an assistant message that
is not trained; ``loss: true`` on another message that is.
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
from natscale.data.trajectory import Trajectory, Turn

ROLE = {"assistant": "assistant", "observation": "tool", "user": "user", "system": "system"}


def _message(turn: Turn, pending_ids: list[str]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": ROLE[turn.role], "content": turn.content}
    if turn.tool_calls:
        msg["content"] = turn.content or None
        msg["tool_calls"] = []
        for c in turn.tool_calls:
            args = c.get("arguments")
            call = {"type": "function", "function": {
                "name": c["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}}  # fmt: skip
            if c.get("id"):
                call["id"] = c["id"]
                pending_ids.append(c["id"])
            msg["tool_calls"].append(call)
    if turn.role == "observation":
        if turn.name:
            msg["name"] = turn.name
        if pending_ids:
            msg["tool_call_id"] = pending_ids.pop(0)
    if turn.role == "assistant" and not turn.train:
        msg["weight"] = 0
    elif turn.role != "assistant" and turn.train:
        msg["loss"] = True
    return msg


def openai_record(traj: Trajectory, notes: Notes) -> dict[str, Any]:
    system = system_with_instruction(traj, notes)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": traj.question})
    pending: list[str] = []
    messages += [_message(t, pending) for t in traj.turns]
    record = {"id": traj.id, "messages": messages, **outcome_fields(traj)}
    record.update(extra_fields(traj, set(record)))
    return record
