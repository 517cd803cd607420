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
function_call -> assistant (the call text), observation/function/tool/ipython -> observation,
system -> system (only as the first turn); ``roles`` adds or overrides entries. ``loss`` flags are
kept; without them only assistant turns are trained. ``question_turn`` selects which user turn
holds the question (AgentInstruct: 1, the first user turn being the instruction, answered by
the acknowledgement). Outcome: ``success_field`` / ``score_field`` (dotted paths), else a final
``... reward = True`` observation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from natscale.data.errors import Issues
from natscale.data.formats.common import (
    empty_error,
    extra_meta,
    field,
    load_records,
    message_role,
    read_outcome,
    record_id,
    split_prompt,
)
from natscale.data.formats.reader import Record
from natscale.data.trajectory import Trajectory, Turn

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
        turns.append(Turn(roles[role], text, train=loss))
    return turns


def load(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    roles: dict[str, str] | None = None,
    question_turn: int = 0,
    conversations_key: str = "conversations",
    task: str = "",
    success_field: str | None = "reward",
    score_field: str | None = "score",
    answer_field: str | None = "answer",
    on_error: str = "raise",
    issues: Issues | None = None,
    skip_reasons: frozenset[str] = frozenset(),
) -> list[Trajectory]:
    role_map = {**ROLE_MAP, **(roles or {})}

    def parse(rec: Record) -> Trajectory:
        items = field(rec, rec.data, conversations_key, list)
        turns = parse_turns(rec, items, conversations_key, role_map, "from", "value")
        parts = split_prompt(rec, turns, question_turn, conversations_key)
        if not parts["turns"]:
            raise empty_error(rec, conversations_key)
        return Trajectory(
            id=record_id(rec),
            task=task,
            outcome=read_outcome(rec, parts["turns"], success_field, score_field),
            meta=extra_meta(rec, conversations_key, answer_field),
            **parts,
        )

    return load_records(paths, parse, on_error=on_error, issues=issues, skip_reasons=skip_reasons)
