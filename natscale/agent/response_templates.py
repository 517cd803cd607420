"""Response templates for the tool-call syntaxes of common model families.

A response template is transformers' declarative description of how a model writes an assistant
turn (``tokenizer.parse_response``; the ``response_template`` a tokenizer config may carry). Few
published models ship one yet, so natscale carries these, each for one way of writing calls, and
``natscale eval`` picks the first that reads back a call as the model's own chat template writes
it (:mod:`natscale.eval.tool_parsing`). Each reads the generated turn alone (anchored at its
start); a turn without a call is all ``content``, and the text around a turn's calls is its
``content`` (each region stripped, joined with a line break).

====================  ===================================================================
``tool_call_json``    ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks after
                      the text, ``<think>`` reasoning: Qwen2.5, Qwen3, Hermes, natscale's
                      built-in templates
``tool_call_xml``     ``<tool_call><function=NAME><parameter=KEY>value</parameter>...``:
                      Qwen3-Coder, Qwen3.5
``llama3_json``       the turn is one JSON object ``{"name": ..., "parameters": {...}}``,
                      optionally after ``<|python_tag|>``: Llama 3.1 - 3.3 (one call a turn)
``mistral``           ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``: Mistral v0.3,
                      Mistral 3
``granite``           ``<|tool_call|> {"name": ..., "arguments": {...}}`` per call: Granite 3
``pythonic``          ``[name(key="value"), ...]`` (a Python call list): Gemma 3's usual
                      function-calling prompt, Llama 3.2's pythonic mode
====================  ===================================================================

Not covered: gpt-oss (calls and answers in harmony channels), Phi-4-mini (Python-literal
arguments), OLMo 3 (calls one per line without a list); give those a template of your own.
"""

from __future__ import annotations

import re
from typing import Any

THINK = {"open": "<think>", "close": "</think>", "content": "text"}
WHOLE_CALL = {"type": "function", "function": "{content}"}  # the region's JSON is the call
NAMED_CALL = {"type": "function", "function": {"name": "{name}", "arguments": "{arguments}"}}


def _template(tool_calls: dict[str, Any], end_of_turn: str, *, think: bool) -> dict[str, Any]:
    # every text region, before and after the calls, not only the last one (ResponseParser
    # joins them)
    content: dict[str, Any] = {"content": "text", "repeats": True}
    if end_of_turn:
        content["close_pattern"] = r"\s*" + re.escape(end_of_turn)
    fields = {"reasoning_content": THINK} if think else {}
    fields |= {"tool_calls": tool_calls, "content": content}
    return {"defaults": {"role": "assistant"}, "start_anchor_pattern": r"\A", "fields": fields}


_TOOL_CALLS = {
    "tool_call_json": (
        {
            "open_pattern": r"\s*<tool_call>",
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": WHOLE_CALL,
        },
        True,
    ),
    "tool_call_xml": (
        {
            "open_pattern": r"\s*<tool_call>\s*<function=(?P<name>[^>\n]+)>",
            "close_pattern": r"</function>\s*</tool_call>",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {
                "tag_pattern": r"<parameter=(?P<key>[^>\n]+)>\s*(?P<value>.*?)\s*</parameter>"
            },
            "transform": {
                "type": "function",
                "function": {"name": "{name}", "arguments": "{content}"},
            },
        },
        True,
    ),
    "llama3_json": (
        {
            "open_pattern": r"\s*(?:<\|python_tag\|>)?\s*(?=\{\s*\"name\")",
            "content": "json",
            "transform": WHOLE_CALL,
        },
        False,
    ),
    "mistral": (
        {
            "open_pattern": r"\s*\[TOOL_CALLS\]",
            "content": "json",
            "transform_each": True,
            "transform": NAMED_CALL,
        },
        False,
    ),
    "granite": (
        {
            "open_pattern": r"\s*<\|tool_call\|>",
            "close_pattern": r"(?=\s*<\|tool_call\|>)|\s*\Z",
            "repeats": True,
            "content": "json",
            "transform": WHOLE_CALL,
        },
        False,
    ),
    "pythonic": (
        {
            "open_pattern": r"\s*(?=\[\w+\()",
            "close_pattern": r"(?<=\)\])",
            "content": "python-call-list",
            "transform_each": True,
            "transform": NAMED_CALL,
        },
        False,
    ),
}
NAMES = tuple(_TOOL_CALLS)
DEFAULT = "tool_call_json"


def response_template(name: str, end_of_turn: str = "") -> dict[str, Any]:
    """The bundled template ``name`` (one of :data:`NAMES`), its text ending at ``end_of_turn``."""
    tool_calls, think = _TOOL_CALLS[name]
    return _template(tool_calls, end_of_turn, think=think)
