"""Shared pieces of the trajectory writers: outcome fields, tool calls as text, lossy-change notes.

Every format module's writer is the inverse of its loader: what the format can hold survives a
write + load round trip unchanged; what it cannot is changed in one documented way and counted
in ``Notes``; what it cannot hold at all is a ``WriteError``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from natscale.data.trajectory import Trajectory, Turn


class WriteError(ValueError):
    """The trajectories cannot be written in this format; the message says why and what to do."""


class Notes(Counter):
    """Counts of lossy changes, e.g. ``notes["instruction folded into the system prompt"] += 1``."""

    def lines(self) -> list[str]:
        return [f"{what} ({n}x)" for what, n in sorted(self.items())]


def tool_calls_text(turn: Turn) -> str:
    """Content with the calls appended as the renderer writes them (``<tool_call>`` JSON blocks)."""
    text = turn.content
    for call in turn.tool_calls or []:
        body = json.dumps({"name": call["name"], "arguments": call.get("arguments")})
        text += ("\n" if text else "") + f"<tool_call>\n{body}\n</tool_call>"
    return text


def outcome_fields(traj: Trajectory) -> dict[str, Any]:
    """Top-level ``reward`` / ``score`` / ``answer`` as the ShareGPT/OpenAI/Alpaca loaders read them.

    ``finished: false`` marks an unfinished episode (NAT's ``info.finished``); those loaders keep it
    in ``meta["extra"]`` and the NAT writer reads it back from there.
    """
    out: dict[str, Any] = {}
    if traj.outcome.success is not None:
        out["reward"] = traj.outcome.success
    if traj.outcome.score is not None:
        out["score"] = traj.outcome.score
    if traj.meta.get("answer"):
        out["answer"] = traj.meta["answer"]
    if not is_finished(traj):
        out["finished"] = False
    return out


def is_finished(traj: Trajectory) -> bool:
    """NAT's flag (``meta["finished"]``), or a ``finished: false`` field of another format."""
    return traj.finished


def extra_fields(traj: Trajectory, taken: set[str]) -> dict[str, Any]:
    """The source record's other top-level fields (``meta["extra"]``), minus the ones we write."""
    extra = traj.meta.get("extra") or {}
    return {k: v for k, v in extra.items() if k not in taken and _jsonable(v)}


def system_with_instruction(traj: Trajectory, notes: Notes) -> str:
    """Formats without instruction turns: the instruction joins the system prompt."""
    if not traj.instruction:
        return traj.system
    notes["instruction folded into the system prompt"] += 1
    if traj.acknowledgement:
        notes["acknowledgement dropped (no place for it)"] += 1
    return f"{traj.system}\n\n{traj.instruction}" if traj.system else traj.instruction


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
