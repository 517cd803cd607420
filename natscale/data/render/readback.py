"""Does a response parser read back the tool calls a chat template teaches?

A model trained through a chat template writes its calls the way the template renders them; a
response template (:mod:`natscale.agent.response_templates`) must read that text back. The check
renders a ``finish`` call and a plain answer as trained assistant turns after a one-question
prompt, and parses each: the call must come back as that call and the answer as that text.
``natscale eval`` picks its parser with it; ``natscale prepare`` warns when the template it trains
tool calls through is read by none (a template that writes malformed JSON, say).
"""

from __future__ import annotations

from typing import Any

from natscale.agent.react import FINISH
from natscale.agent.response_templates import NAMES, response_template
from natscale.agent.tool_calls import (
    BUILTIN_SCHEMAS,
    ResponseParser,
    ToolCall,
    ToolCallParseError,
    call_id,
    single_parameter,
)
from natscale.data.render import Message, Renderer


def candidates(tokenizer, end_of_turn: str) -> list[ResponseParser]:
    """The parsers tried when none is named: the tokenizer's own ``response_template`` (models
    that ship one), then every bundled template."""
    own = getattr(tokenizer, "response_template", None)
    found = [ResponseParser(own, prefixed=True, name="the tokenizer's response_template")]
    return (found if own else []) + [
        ResponseParser(response_template(n, end_of_turn), prefixed=False, name=n) for n in NAMES
    ]


def reads_back(
    renderer: Renderer, tokenizer, parser: ResponseParser, tools: list[dict[str, Any]]
) -> str | None:
    """None when ``parser`` reads a ``finish`` call and a plain answer back from the turns
    ``renderer`` trains for them (with ``tools`` offered); else what it read. Raises the
    renderer's ``TemplateError`` when the chat template refuses the turns."""
    finish = next((t for t in tools if t["function"]["name"] == FINISH), None)
    arguments = {(single_parameter(finish) if finish else None) or "answer": "12"}
    call = {"id": call_id(1, 0), "name": FINISH, "arguments": arguments}
    question = Message("user", "What is 5 + 7?")
    probes = [
        (Message("assistant", "", True, [call]), [ToolCall(FINISH, arguments)], ""),
        (Message("assistant", "The answer is 12.", True), [], "The answer is 12."),
    ]
    prompt = renderer.generation_prompt([question], tools)
    prefix = tokenizer.decode(prompt, skip_special_tokens=False) if parser.prefixed else ""
    eot = renderer.end_of_turn
    for message, calls, content in probes:
        enc = renderer.encode([question, message], tools=tools)
        ids, mask = enc.ids.tolist(), enc.mask.tolist()
        end = len(prompt)
        while end < len(ids) and mask[end]:
            end += 1
        written = tokenizer.decode(ids[len(prompt) : end], skip_special_tokens=False)
        written = written[: -len(eot)] if eot and written.endswith(eot) else written
        try:
            turn = parser.parse(written, prefix, tools)
        except ToolCallParseError as exc:
            return f"cannot read {written!r} ({exc})"
        if turn.calls != calls or turn.content != content:
            got = [(c.name, c.arguments) for c in turn.calls]
            return f"reads {written!r} as the calls {got} and the text {turn.content!r}"
    return None


def unreadable_calls(renderer: Renderer, tokenizer) -> str | None:
    """Why no candidate parser reads back the calls ``renderer`` trains (the first one's
    reading), or None when one does or the template cannot render the check's turns."""
    from natscale.data.render.hf import TemplateError

    tools = [BUILTIN_SCHEMAS[FINISH]]
    first = None
    for parser in candidates(tokenizer, renderer.end_of_turn):
        try:
            why = reads_back(renderer, tokenizer, parser, tools)
        except TemplateError:
            return None
        except ToolCallParseError:  # the tokenizer's own template is not one transformers reads
            continue
        if why is None:
            return None
        first = first or f"{parser.name} {why}"
    return first
