"""Text helpers of the chat-template renderer (``natscale.data.render.hf``): placeholders,
skeleton positions, and where the real render puts each content."""

from __future__ import annotations

import dataclasses
import json
import re

from natscale.data.render.encode import Piece
from natscale.data.render.messages import Message

SLOT = "\ue000{}\ue001"  # a placeholder content: message i's
SLOT_RE = re.compile("\ue000(\\d+)\ue001")
_THINK_TAGS = re.compile(r"</?think>")


def content_parts(content: str) -> list[str]:
    """A content's text outside and inside ``<think>`` tags, each stripped (templates put the
    tags and the whitespace around them their own way)."""
    return [s for part in _THINK_TAGS.split(content) if (s := part.strip())]


def cut(pieces: list[Piece], skip: int) -> list[Piece]:
    """``pieces`` without their first ``skip`` characters."""
    out = []
    for p in pieces:
        if skip >= len(p.text):
            skip -= len(p.text)
            continue
        out.append(p._replace(text=p.text[skip:]) if skip else p)
        skip = 0
    return out


def positions(
    literals: list[str], slots: list[int]
) -> tuple[str, list[int], dict[int, tuple[int, int]]]:
    """A skeleton's text with its placeholders, where each literal starts in it, and the
    ``(start, end)`` of each message's placeholder."""
    starts, where, pos = [], {}, 0
    for j, lit in enumerate(literals):
        starts.append(pos)
        pos += len(lit)
        if j < len(slots):
            where[slots[j]] = (pos, pos + len(SLOT.format(slots[j])))
            pos = where[slots[j]][1]
    return join(literals, [SLOT.format(i) for i in slots]), starts, where


def with_stand_ins(messages: list[Message]) -> list[Message]:
    """``messages`` with each tool call's arguments ``{}`` and its id zeros of the same length
    (an observation's ``tool_call_id`` too): what a template renders around the messages apart
    from those."""
    out = []
    for m in messages:
        if m.tool_calls:
            calls = [
                {"name": c["name"], "arguments": {}}
                | ({"id": "0" * len(c["id"])} if c.get("id") else {})
                for c in m.tool_calls
            ]
            m = dataclasses.replace(m, tool_calls=calls)
        if m.tool_call_id:
            m = dataclasses.replace(m, tool_call_id="0" * len(m.tool_call_id))
        out.append(m)
    return out


# how a template may insert a content: as it is, stripped (Llama-2's ``| trim``), or as a JSON
# string's inside (Llama 3's tool results go through ``tojson``, whose quotes are template text)
_INSERTS = (
    lambda c: c,
    str.strip,
    lambda c: json.dumps(c, ensure_ascii=False)[1:-1],
)


def place(
    literals: list[str], contents: list[str], real: str, exact: list[bool]
) -> tuple[list[str], bool] | None:
    """The text each content has in ``real`` (the render with real contents) between the
    template text ``literals``: each as it is, stripped, or JSON-escaped (the first that puts the
    next literal right after it); None when ``real`` is not the literals with the contents.

    A content that is not ``exact`` (an untrained message) may be rendered otherwise: it is
    then whatever the template puts before the next literal (Qwen3's template drops the
    reasoning of earlier turns), the text the model is shown at inference too. The flag says
    whether one was."""
    if not real.startswith(literals[0]):
        return None
    pos, placed, last, other = len(literals[0]), [], len(contents) - 1, False
    for j, (content, lit, must) in enumerate(zip(contents, literals[1:], exact, strict=True)):
        for insert in _INSERTS:
            text = insert(content)
            if real.startswith(text, pos) and real.startswith(lit, pos + len(text)):
                break
        else:
            if must:
                return None
            if j == last:
                end = len(real) - len(lit) if real.endswith(lit) else -1
            else:  # the first place the next literal follows (adjacent contents: none)
                end = real.find(lit, pos) if lit else -1
            if end < pos:
                return None
            text, other = real[pos:end], True
        placed.append(text)
        pos += len(text) + len(lit)
    return (placed, other) if pos == len(real) else None


def join(literals: list[str], contents: list[str]) -> str:
    out = [literals[0]]
    for c, lit in zip(contents, literals[1:], strict=True):
        out += [c, lit]
    return "".join(out)
