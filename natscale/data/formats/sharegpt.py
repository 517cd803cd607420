"""ShareGPT / AgentInstruct (THUDM AgentTuning, FastChat, LLaMA-Factory) conversations.

One record (JSON array or JSONL)::

    {"id": "os_17",
     "conversations": [
        {"from": "human", "value": "You are an assistant that operates a shell ...", "loss": false},
        {"from": "gpt", "value": "OK.", "loss": false},
        {"from": "human", "value": "How many files are in /etc?", "loss": false},
        {"from": "gpt", "value": "Think: ...\\nAct: bash ...", "loss": true},
        {"from": "human", "value": "The output of the OS: 212", "loss": false}],
     "reward": 1}

``from`` values: human/user -> user, gpt/assistant/chatgpt/bot/model -> assistant,
function_call -> assistant (its JSON ``{"name", "arguments"}`` becomes a structured tool call,
joined to the assistant turn before it if that has none; other text stays text),
observation/function/tool/ipython -> observation, system -> system (only as the first turn; a
top-level ``system`` field, LLaMA-Factory's layout, is read as one). ``tools`` (a list of schemas
or its JSON text) is the tool list offered to the agent; ``roles`` adds or overrides entries. ``loss`` flags are
kept; without them only assistant turns are trained. ``question_turn`` selects which user turn
holds the question (AgentInstruct: 1, the first user turn being the instruction, answered by
the acknowledgement). Outcome: ``success_field`` / ``score_field`` (dotted paths), else a final
``... reward = True`` observation.

Writing (``natscale convert data --to sharegpt|agentinstruct``), ``conversations: [{from, value,
loss}]``:

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
import os
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field

from natscale.config.loader import get_dotted
from natscale.data.errors import Issues
from natscale.data.formats.base import Format, RecordSource, per_record
from natscale.data.formats.common import (
    chat_trajectory,
    field,
    load_records,
    message_role,
    record_field,
)
from natscale.data.formats.reader import Record
from natscale.data.formats.writing import (
    Notes,
    extra_fields,
    outcome_fields,
    system_with_instruction,
)
from natscale.data.trajectory import Trajectory, Turn


class ShareGPTSource(RecordSource):
    format: Literal["sharegpt", "agentinstruct"]
    roles: dict[str, Literal["assistant", "observation", "user", "system"]] | None = None
    question_turn: int | None = Field(None, ge=0, description="default 0; agentinstruct 1")
    conversations_key: str = "conversations"
    tools_field: str | None = Field("tools", description="tool schemas offered to the agent")
    system_field: str | None = Field(
        "system", description="top-level system prompt (LLaMA-Factory) when no system turn"
    )


ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "observation": "observation",
    "function": "observation",
    "tool": "observation",
    "ipython": "observation",
    "system": "system",
}


def parse_turns(
    rec: Record, items: list, list_name: str, roles: dict[str, str], role_key: str, text_key: str
) -> list[Turn]:
    turns = []
    for i, msg in enumerate(items):
        name = f"{list_name}[{i}]"
        role = message_role(
            rec,
            msg,
            name,
            roles,
            role_key=role_key,
            hint="map it with the source's roles option, e.g. roles: {env: observation}",
        )
        text = field(rec, msg, text_key, str, name=f"{name}.{text_key}")
        loss = field(rec, msg, "loss", bool, name=f"{name}.loss", default=None)
        calls = _calls(text) if role == "function_call" and roles[role] == "assistant" else None
        if calls is None:
            turns.append(Turn(roles[role], text, train=loss))
        elif turns and turns[-1].role == "assistant" and not turns[-1].tool_calls:
            turns[-1].tool_calls = calls  # the calls of the reply before it (our writer's layout)
        else:
            turns.append(Turn("assistant", "", train=loss, tool_calls=calls))
    return turns


def _calls(text: str) -> list[dict[str, Any]] | None:
    """A ``function_call`` turn's JSON (``{"name", "arguments"}`` or a list of them) as
    structured tool calls, as LLaMA-Factory reads it; None when it is not such JSON (kept as
    text)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in items):
        return None
    return [{"name": c["name"], "arguments": c.get("arguments")} for c in items]


def load(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    roles: dict[str, str] | None,
    question_turn: int,
    conversations_key: str,
    tools_field: str | None,
    system_field: str | None,
    task: str,
    success_field: str | None,
    score_field: str | None,
    answer_field: str | None,
    on_error: str = "raise",
    issues: Issues | None = None,
    skip_reasons: frozenset[str] = frozenset(),
) -> list[Trajectory]:
    role_map = {**ROLE_MAP, **(roles or {})}

    def parse(rec: Record) -> Trajectory:
        items = record_field(rec, conversations_key, list)
        turns = parse_turns(rec, items, conversations_key, role_map, "from", "value")
        system = get_dotted(rec.data, system_field)
        if isinstance(system, str) and system and not (turns and turns[0].role == "system"):
            turns.insert(0, Turn("system", system, train=False))  # LLaMA-Factory's layout
        return chat_trajectory(
            rec,
            turns,
            conversations_key,
            question_turn=question_turn,
            task=task,
            success_field=success_field,
            score_field=score_field,
            tools_field=tools_field,
            answer_field=answer_field,
        )

    return load_records(
        paths,
        parse,
        on_error=on_error,
        issues=issues,
        skip_reasons=skip_reasons,
        wrap_lists=conversations_key,  # ETO: a record may be the bare list of turns
    )


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
    if traj.tools:
        record["tools"] = traj.tools
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


# question_turn: the user turn holding the question (AgentInstruct puts its instruction first)
ENTRIES = [
    Format("sharegpt", load, per_record(sharegpt_record), ShareGPTSource, {"question_turn": 0}),
    Format(
        "agentinstruct",
        load,
        per_record(agentinstruct_record),
        ShareGPTSource,
        {"question_turn": 1},
    ),
]
