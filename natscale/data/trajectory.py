"""The canonical trajectory every loader produces and every later stage consumes.

One of the pipeline's contracts (docs/architecture.md, "The canonical trajectory").

A trajectory is the task prompt (``system``, ``instruction`` and its ``acknowledgement``), the
``question`` (where the NAT marker goes) and the agent's ``turns`` after it::

    Trajectory(
        id="gsm8k-17", task="math", instruction="Solve a math problem with ...",
        question="Janet has 3 apples ...",
        turns=[Turn("assistant", "Thought: ...\\nAction: calculate[3 * 2]"),
               Turn("observation", "Observation: 6"),
               Turn("assistant", "Thought: ...\\nAction: finish[6]")],
        outcome=Outcome(success=True, score=1.0, reward=True),
        meta={"pred": "6", "gt": "6"},
    )

``Turn.train`` says whether the turn's tokens are trained; by default only assistant turns are
(``Turn(role, content)`` fills it in), formats with per-turn loss flags keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# canonical turn roles; `observation` = tool / environment output, `user` = a human turn
ROLES = ("assistant", "observation", "user", "system")


@dataclass
class Turn:
    """One message after the question. ``tool_calls`` are OpenAI-style structured calls
    (``[{"name": str, "arguments": dict | str, "id"?: str}]``) kept for formats that have them."""

    role: str
    content: str
    train: bool | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None  # tool name of an observation, when the format records it
    # the id of the call an observation answers, when the format records it (see answered_call)
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown turn role {self.role!r}; expected one of {ROLES}")
        if self.train is None:
            self.train = self.role == "assistant"


def answered_call(pending: list[str], tool_call_id: str | None) -> str | None:
    """The id of the call an observation answers, taken out of ``pending`` (the ids of the calls
    still waiting for a result, in call order): its own ``tool_call_id`` when it has one (results
    of parallel calls may come back in any order), else the first pending one (None when no call
    is pending). ValueError when ``tool_call_id`` is not pending."""
    if tool_call_id is None:
        return pending.pop(0) if pending else None
    if tool_call_id not in pending:
        waiting = f"the calls waiting are {pending}" if pending else "no call with an id is waiting"
        raise ValueError(
            f"tool_call_id {tool_call_id!r} answers no call made before it ({waiting})"
        )
    pending.remove(tool_call_id)
    return tool_call_id


@dataclass
class Outcome:
    """How the trajectory went. ``success`` decides the binary class, ``score`` (e.g. answer F1
    in [0, 1]) the fine-grained bucket, ``reward`` is the raw value the source recorded."""

    success: bool | None = None
    score: float | None = None
    reward: Any = None


@dataclass
class Trajectory:
    id: str
    question: str
    turns: list[Turn]
    task: str = ""
    instruction: str = ""
    # the assistant's reply to the instruction turn; None = the renderer's default
    acknowledgement: str | None = None
    system: str = ""
    # tool schemas offered to the agent, OpenAI form ([{"type": "function", "function": {...}}])
    tools: list[dict[str, Any]] | None = None
    outcome: Outcome = field(default_factory=Outcome)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """False when the source marks the episode unfinished (no final answer): NAT's flag
        (``meta["finished"]``), or a top-level ``finished: false`` of another format (kept in
        ``meta["extra"]``; ``convert data`` writes it to openai and sharegpt files)."""
        extra = self.meta.get("extra") or {}
        return bool(self.meta.get("finished", True)) and extra.get("finished") is not False
