"""OpenAI chat ``messages`` (fine-tuning JSONL, FireAct ``gpt_format``), with tool calls.

One record::

    {"messages": [
        {"role": "system", "content": "You can call a calculator."},
        {"role": "user", "content": "What is 17 * 23?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "calculate", "arguments": "{\\"expression\\": \\"17 * 23\\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "391"},
        {"role": "assistant", "content": "17 * 23 = 391."}],
     "reward": true}

Roles: system (first only), user, assistant, tool / function -> observation (``name`` kept),
``developer`` -> system. ``content`` may be a string, null, or a list of ``{"type": "text",
"text": ...}`` parts. Assistant ``tool_calls`` are kept structured on the turn (``name``,
``arguments``, ``id``); the renderer serialises them. OpenAI's legacy function-calling layout
reads the same way: an assistant's ``function_call: {"name", "arguments"}`` is one call (without
an id), the ``function`` message after it its result, and a top-level ``functions`` list the
tool schemas when the record has no ``tools_field``. A per-message ``weight`` (0/1, as in
OpenAI fine-tuning) or ``loss`` flag decides whether that turn is trained. ``question_turn`` and
the outcome fields work as for ShareGPT. A record with an ``info`` object holding ``pred`` or
``finished`` (a natscale eval episode with native tool calls, :mod:`natscale.eval.episodes`) is
read as the NAT loader reads one: ``info.pred`` is the prediction the outcome rules score,
``info.finished: false`` (without ``info.finished``: a null ``info.pred``) marks it unfinished. An assistant's ``reasoning_content`` (or ``reasoning``)
goes before its content in ``<think>`` tags, as reasoning models write it (as does gpt-oss data's
``thinking``); ``reasoning: drop`` leaves it out.

Writing (``natscale convert data --to openai``): ``[system], user question, turns``; the
instruction joins the system prompt. Assistant tool calls stay structured (``{"id", "type":
"function", "function": {"name", "arguments": JSON string}}``); observations become ``tool``
messages (with the tool ``name`` and the id of the call they answer when known). Training flags
follow OpenAI fine-tuning: ``weight: 0`` on an assistant message that is not trained; ``loss:
true`` on another message that is.
"""

from __future__ import annotations

import contextlib
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
    episode_meta,
    field,
    load_records,
    message_role,
    read_tools,
    record_field,
)
from natscale.data.formats.reader import Record, without_arrow_nulls
from natscale.data.formats.writing import (
    Notes,
    extra_fields,
    outcome_fields,
    system_with_instruction,
)
from natscale.data.trajectory import Trajectory, Turn, answered_call


class OpenAISource(RecordSource):
    format: Literal["openai"]
    question_turn: int = Field(0, ge=0)
    messages_key: str = "messages"
    tools_field: str | None = Field("tools", description="tool schemas offered to the agent")
    reasoning: Literal["keep", "drop"] = Field(
        "keep",
        description="an assistant's reasoning field (reasoning_content, reasoning, thinking): "
        "keep = before its content in <think> tags; drop = left out (to train without it)",
    )


# where OpenAI's legacy function-calling format (assistant ``function_call``, ``function``
# results) lists the tool schemas, read when the record has no ``tools_field``
LEGACY_TOOLS = "functions"
# content part types that hold text (chat completions; the Responses API's input/output text)
TEXT_PARTS = ("text", "input_text", "output_text")
ROLE_MAP = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "observation",
    "function": "observation",
}


def _content(rec: Record, msg: dict[str, Any], name: str) -> str:
    content = msg.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, str):  # a bare string part
                parts.append(part)
                continue
            if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise rec.error(
                    f"content part of type {kind!r}: only text parts ({', '.join(TEXT_PARTS)}) "
                    "can be trained on",
                    field=f"{name}.content[{j}]",
                    reason="wrong_type",
                    hint="drop the non-text parts, or skip such records with on_error: skip",
                )
            parts.append(field(rec, part, "text", str, name=f"{name}.content[{j}].text"))
        return "".join(parts)
    raise rec.error(
        f"expected a string, null or a list of text parts, got {type(content).__name__}",
        field=f"{name}.content",
        reason="wrong_type",
    )


def _tool_calls(rec: Record, msg: dict[str, Any], name: str) -> list[dict[str, Any]] | None:
    """The message's calls: its ``tool_calls``, or its legacy ``function_call`` (OpenAI's
    function-calling format before tool calls) as one call without an id."""
    calls = field(rec, msg, "tool_calls", list, name=f"{name}.tool_calls", default=None)
    legacy = field(rec, msg, "function_call", dict, name=f"{name}.function_call", default=None)
    if calls and legacy:
        raise rec.error(
            "the message has both tool_calls and a legacy function_call",
            field=f"{name}.function_call",
            reason="conflicting_fields",
            hint="keep one of them (tool_calls for new data)",
        )
    if legacy:
        return [_call(rec, legacy, f"{name}.function_call")]
    if not calls:
        return None
    out = []
    for j, call in enumerate(calls):
        where = f"{name}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise rec.error("expected an object", field=where, reason="wrong_type")
        fn = field(rec, call, "function", dict, name=f"{where}.function")
        entry = _call(rec, fn, f"{where}.function")
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def _call(rec: Record, fn: dict[str, Any], where: str) -> dict[str, Any]:
    """``{"name", "arguments"}`` of a call's ``function`` (or legacy ``function_call``) object."""
    args = field(rec, fn, "arguments", (str, dict), name=f"{where}.arguments")
    if isinstance(args, str):
        # keep structured arguments when they are JSON, as the chat templates expect
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args)
    elif rec.arrow:  # Parquet: each call's arguments carry the other calls' names as nulls
        args = without_arrow_nulls(args)
    return {"name": field(rec, fn, "name", str, name=f"{where}.name"), "arguments": args}


# where an assistant message's reasoning is (DeepSeek's API and vLLM: reasoning_content;
# vLLM's later versions and OpenRouter: reasoning; gpt-oss data: thinking)
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")


def _with_reasoning(
    rec: Record, msg: dict[str, Any], name: str, content: str, reasoning: str
) -> str:
    """``content`` after the message's reasoning in ``<think>`` tags, the form reasoning models
    write it in and chat templates (Qwen3's, DeepSeek-R1's) split it from; left out only when
    ``reasoning`` is ``drop``."""
    found = {
        key: field(rec, msg, key, str, name=f"{name}.{key}")
        for key in REASONING_FIELDS
        if msg.get(key) is not None
    }
    texts = {v.strip("\n") for v in found.values()} - {""}
    if not texts or reasoning == "drop":
        return content
    if len(texts) > 1:
        raise rec.error(
            f"{' and '.join(found)} differ; keep one of them",
            field=f"{name}.{next(iter(found))}",
            reason="conflicting_fields",
        )
    if "<think>" in content or "</think>" in content:
        raise rec.error(
            "the message has reasoning both in a reasoning field and in <think> tags in its "
            "content; keep it in one place",
            field=f"{name}.content",
            reason="conflicting_fields",
        )
    return f"<think>\n{texts.pop()}\n</think>\n\n{content.lstrip(chr(10))}"


def parse_messages(
    rec: Record, items: list, list_name: str, *, reasoning: str = "keep"
) -> list[Turn]:
    turns = []
    pending: list[str] = []  # the ids of the calls not answered yet
    for i, msg in enumerate(items):
        name = f"{list_name}[{i}]"
        role = message_role(rec, msg, name, ROLE_MAP)
        train = field(rec, msg, "loss", bool, name=f"{name}.loss", default=None)
        weight = field(rec, msg, "weight", (int, float), name=f"{name}.weight", default=None)
        if weight is not None:
            if weight not in (0, 1):  # (True is refused as not a number already)
                raise rec.error(
                    f"weight {weight!r}: OpenAI's per-message weight is 0 (not trained) or 1 "
                    "(trained)",
                    field=f"{name}.weight",
                    reason="bad_value",
                    hint="a class's loss weight is strategy.weights in the prepare config",
                )
            train = bool(weight)
        content = _content(rec, msg, name)
        if role == "assistant":
            content = _with_reasoning(rec, msg, name, content, reasoning)
        calls = _tool_calls(rec, msg, name) if role == "assistant" else None
        pending += [c["id"] for c in calls or () if "id" in c]
        call_id = None
        if ROLE_MAP[role] == "observation":
            call_id = field(
                rec, msg, "tool_call_id", str, name=f"{name}.tool_call_id", default=None
            )
            try:
                answered_call(pending, call_id)
            except ValueError as exc:
                raise rec.error(
                    str(exc),
                    field=f"{name}.tool_call_id",
                    reason="unknown_tool_call_id",
                    hint="give the id of the call it answers (tool_calls[].id), or leave "
                    "tool_call_id out to pair the results with the calls in order",
                ) from None
        turns.append(
            Turn(
                ROLE_MAP[role],
                content,
                train=train,
                tool_calls=calls,
                name=msg.get("name") if isinstance(msg.get("name"), str) else None,
                tool_call_id=call_id,
            )
        )
    return turns


def load(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    question_turn: int,
    messages_key: str,
    tools_field: str | None,
    task: str,
    reasoning: str,
    success_field: str | None,
    score_field: str | None,
    answer_field: str | None,
    on_error: str = "raise",
    issues: Issues | None = None,
    skip_reasons: frozenset[str] = frozenset(),
) -> list[Trajectory]:
    def parse(rec: Record) -> Trajectory:
        items = record_field(rec, messages_key, list)
        traj = chat_trajectory(
            rec,
            parse_messages(rec, items, messages_key, reasoning=reasoning),
            messages_key,
            question_turn=question_turn,
            task=task,
            success_field=success_field,
            score_field=score_field,
            tools_field=tools_field,
            answer_field=answer_field,
        )
        if (
            traj.tools is None
            and tools_field is not None
            and get_dotted(rec.data, tools_field) is None
        ):
            traj.tools = read_tools(rec, LEGACY_TOOLS)  # the legacy format's `functions` list
        info = rec.data.get("info")
        if isinstance(info, dict) and ("pred" in info or "finished" in info):
            traj.meta.update(episode_meta(info))  # a natscale eval episode (tool-call form)
        return traj

    return load_records(
        paths,
        parse,
        on_error=on_error,
        issues=issues,
        skip_reasons=skip_reasons,
        wrap_lists=messages_key,  # ETO: a record may be the bare list of turns
    )


WRITE_ROLE = {"assistant": "assistant", "observation": "tool", "user": "user", "system": "system"}


def _message(turn: Turn, pending_ids: list[str]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": WRITE_ROLE[turn.role], "content": turn.content}
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
        answered = answered_call(pending_ids, turn.tool_call_id)
        if answered is not None:
            msg["tool_call_id"] = answered
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
    if traj.tools:
        record["tools"] = traj.tools
    record.update(extra_fields(traj, set(record)))
    return record


ENTRIES = [Format("openai", load, per_record(openai_record), OpenAISource)]
