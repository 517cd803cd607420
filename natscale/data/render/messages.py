"""Chat messages with per-message train flags: the input of every template.

Layout of a training example (the paper's, ``instruction: turn``)::

    [system]                                   untrained, only when there is one
    user       instruction                     untrained   } only when the task has an
    assistant  acknowledgement                 untrained   } instruction
    user       question with its NAT marker    untrained
    assistant / observation / user turns       assistant trained (or the source's loss flags)

``instruction: prepend`` puts the instruction and the question in one user turn (no
acknowledgement); ``instruction: system`` makes the instruction the system message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from natscale.data.prompts import PAPER_ACKNOWLEDGEMENT
from natscale.data.trajectory import Trajectory

INSTRUCTION_MODES = ("turn", "prepend", "system")


@dataclass
class Message:
    role: str  # system | user | assistant | observation
    content: str
    train: bool = False
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None  # the call an observation answers (else: the next one)


def prompt_messages(
    *,
    system: str = "",
    instruction: str = "",
    acknowledgement: str | None = None,
    query: str,
    mode: str = "turn",
) -> list[Message]:
    """The untrained messages up to and including the question turn."""
    if mode not in INSTRUCTION_MODES:
        raise ValueError(f"instruction mode must be one of {INSTRUCTION_MODES}, got {mode!r}")
    out: list[Message] = []
    if mode == "system" and instruction:
        system = f"{system}\n\n{instruction}" if system else instruction
        instruction = ""
    if system:
        out.append(Message("system", system))
    if instruction and mode == "turn":
        ack = PAPER_ACKNOWLEDGEMENT if acknowledgement is None else acknowledgement
        out += [Message("user", instruction), Message("assistant", ack)]
    elif instruction:  # prepend
        query = f"{instruction}\n\n{query}"
    out.append(Message("user", query))
    return out


def trajectory_messages(
    traj: Trajectory, query: str, *, mode: str = "turn", acknowledgement: str | None = None
) -> list[Message]:
    """All messages of a training example: the prompt with ``query`` as the question turn,
    then the trajectory's turns with their train flags. ``acknowledgement`` overrides the
    trajectory's own."""
    ack = acknowledgement if acknowledgement is not None else traj.acknowledgement
    out = prompt_messages(
        system=traj.system,
        instruction=traj.instruction,
        acknowledgement=ack,
        query=query,
        mode=mode,
    )
    for t in traj.turns:
        out.append(Message(t.role, t.content, bool(t.train), t.tool_calls, t.name, t.tool_call_id))
    return out
