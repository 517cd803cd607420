"""Alpaca / FireAct writer: the question in ``instruction``, the ReAct transcript in ``output``.

``output`` is the turns' text joined by newlines; the loader splits it again at lines starting
``Observation`` / ``Thought`` / ``Action``, so an observation that does not start with
``Observation`` gets that prefix, an assistant turn right after an observation that does not
start with ``Thought``/``Action`` gets ``Thought: `` (else it would be read back as part of the
observation), and turn-level training flags are not kept (the loader trains assistant turns). The instruction joins ``system``; tool calls are written as ``<tool_call>`` text.
"""

from __future__ import annotations

from typing import Any

from natscale.agent.react import AGENT_LINE
from natscale.convert.writers.common import (
    Notes,
    extra_fields,
    outcome_fields,
    system_with_instruction,
    tool_calls_text,
)
from natscale.data.trajectory import Trajectory


def alpaca_record(traj: Trajectory, notes: Notes) -> dict[str, Any]:
    lines: list[str] = []
    previous = ""
    for turn in traj.turns:
        text = tool_calls_text(turn)
        if turn.tool_calls:
            notes["tool calls written as <tool_call> text"] += 1
        if turn.role == "observation" and not text.lstrip().startswith("Observation"):
            text = f"Observation: {text}"
            notes["'Observation: ' prefix added"] += 1
        if turn.role == "assistant" and previous == "observation" and not AGENT_LINE.match(text):
            text = f"Thought: {text}"
            notes["'Thought: ' prefix added after an observation"] += 1
        previous = turn.role
        if turn.role in ("user", "system"):
            notes[f"{turn.role} turns written as assistant text"] += 1
        if bool(turn.train) != (turn.role == "assistant"):
            notes["non-default training flags dropped"] += 1
        lines.append(text)
    record: dict[str, Any] = {"id": traj.id, "instruction": traj.question, "input": ""}
    record["output"] = "\n".join(lines)
    system = system_with_instruction(traj, notes)
    if system:
        record["system"] = system
    record.update(outcome_fields(traj))
    record.update(extra_fields(traj, set(record)))
    return record
