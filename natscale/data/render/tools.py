"""Tool schemas (function definitions) of a trajectory, and their system-prompt rendering.

Loaders normalise every source's tool list to the OpenAI form ``[{"type": "function",
"function": {"name", "description", "parameters"}}]`` (what ``apply_chat_template(...,
tools=...)`` takes). A tokenizer chat template that renders ``tools`` gets them that way; a
built-in template, or a chat template that ignores ``tools``, gets them in the system prompt as
:func:`tools_system_text` writes them (the Hermes / Qwen2.5 wording, which matches the
``<tool_call>`` JSON blocks the built-in templates write for calls).
"""

from __future__ import annotations

import json
from typing import Any

from natscale.data.render.messages import Message

TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def normalize_tools(raw: Any) -> list[dict[str, Any]]:
    """OpenAI-form tool list from a list of schemas (OpenAI ``{"type": "function", "function":
    {...}}`` or bare ``{"name", ...}`` as LLaMA-Factory writes) or its JSON text.

    Raises ``ValueError`` saying what is wrong."""
    if isinstance(raw, str):
        if not raw.strip():
            return []
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tools is a string but not JSON ({exc.msg})") from None
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValueError(f"expected a list of tool schemas, got {type(raw).__name__}")
    out = []
    for k, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"tool {k} has no function name")
        out.append({"type": "function", "function": fn})
    return out


def tools_system_text(tools: list[dict[str, Any]]) -> str:
    body = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return TOOLS_HEADER + body + TOOLS_FOOTER


def with_tools_in_system(messages: list[Message], tools: list[dict[str, Any]] | None) -> list:
    """``messages`` with the tool schemas appended to the system message (added if none)."""
    if not tools:
        return messages
    text = tools_system_text(tools)
    if messages and messages[0].role == "system":
        first = messages[0]
        merged = Message("system", f"{first.content}\n\n{text}" if first.content else text)
        return [merged, *messages[1:]]
    return [Message("system", text), *messages]
