"""The response parser of an eval with native tool calls (``loop.protocol: tool_calls``).

``prompt.response_template`` names a JSON file holding a transformers response template (the
``response_template`` a tokenizer config may carry); without it the tokenizer's own is used, else
natscale's ``<tool_call>`` JSON reader (:func:`natscale.agent.tool_calls.default_response_template`).
"""

from __future__ import annotations

import json
from pathlib import Path

from natscale.agent.tool_calls import ResponseParser, ToolCallParseError, response_parser
from natscale.eval.errors import EvalError


def read_response_template(path: str) -> dict:
    file = Path(path)
    try:
        template = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"prompt.response_template: {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise EvalError(f"prompt.response_template: {path}: not a JSON file ({exc})") from None
    if not isinstance(template, dict):
        raise EvalError(
            f"prompt.response_template: {path}: expected a JSON object (a transformers response "
            f"template with 'fields'), got {type(template).__name__}"
        )
    return template


def build_parser(path: str | None, prompter) -> ResponseParser:
    """The parser for ``prompter``'s tokenizer; a template that transformers refuses is an
    error naming where it came from."""
    template = read_response_template(path) if path else None
    parser = response_parser(prompter.tokenizer, template, prompter.end_of_turn)
    try:
        parser.parse("")  # transformers checks the template's shape on first use
    except ToolCallParseError as exc:
        origin = path or "the tokenizer's response_template"
        raise EvalError(f"prompt.response_template: {origin}: {exc}") from None
    return parser
