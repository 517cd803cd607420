"""Native tool calls: the agent calls its tools the way its chat template writes calls.

With ``loop.protocol: tool_calls`` the tools are offered as OpenAI-form schemas (through the chat
template's ``tools``, as in training), the model writes its calls in its own syntax (Qwen's and
Hermes' ``<tool_call>`` JSON blocks, natscale's built-in templates' likewise, Llama 3's bare
JSON, ...) and each call's result comes back as a ``tool`` message. Parsing the written turn into
``content`` / reasoning / ``tool_calls`` is transformers' own response parser
(``tokenizer.parse_response``, driven by a declarative *response template*): the one named in
``prompt.response_template``, else the tokenizer's ``response_template`` when the model ships one,
else the first of natscale's (:mod:`natscale.agent.response_templates`) that reads back a call as
the model's chat template writes it (``natscale.eval.tool_parsing``).

Built-in tools take one string each (:data:`BUILTIN_SCHEMAS`); ``finish`` ends the episode with its
``answer``. A turn with no call ends the episode too: its text (after the reasoning) is the answer,
as a chat agent answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from natscale.agent.react import CALCULATE, FINISH, SEARCH, THINK_END

THINK_START = "<think>"


def _schema(name: str, description: str, param: str, param_description: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {param: {"type": "string", "description": param_description}},
                "required": [param],
            },
        },
    }


BUILTIN_SCHEMAS = {
    CALCULATE: _schema(
        CALCULATE,
        "Evaluate an arithmetic expression exactly: numbers, + - * / // % **, parentheses.",
        "expression",
        "the expression, e.g. (3 + 4) * 2",
    ),
    SEARCH: _schema(
        SEARCH,
        "Search the corpus; returns the top 3 passages.",
        "query",
        "what to search for",
    ),
    FINISH: _schema(
        FINISH,
        "Give the final answer; this ends the task.",
        "answer",
        "the final answer, as short as possible",
    ),
}
FINISH_ARGUMENT = "answer"


class ToolCallParseError(ValueError):
    """An assistant turn whose tool calls cannot be read (the message says why)."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParsedTurn:
    content: str  # the text outside reasoning and calls (its regions joined by "\n"), stripped
    reasoning: str | None
    calls: list[ToolCall]

    def history_content(self) -> str:
        """The turn's text as the history keeps it: the reasoning in ``<think>`` tags before
        the content, the form the ``openai`` data loader gives a reasoning field."""
        if not self.reasoning:
            return self.content
        return f"{THINK_START}\n{self.reasoning}\n{THINK_END}\n\n{self.content}"


def _arguments(raw: Any, name: str) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolCallParseError(
                f"the arguments of the call to {name!r} are not JSON ({exc.msg})"
            ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ToolCallParseError(
            f"the arguments of the call to {name!r} are {type(raw).__name__}, not a JSON object"
        )
    return raw


def _call(entry: Any) -> ToolCall:
    fn = entry.get("function", entry) if isinstance(entry, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ToolCallParseError(f"a tool call without a function name: {entry!r}"[:200])
    args = fn.get("arguments", fn.get("parameters"))
    return ToolCall(fn["name"], _arguments(args, fn["name"]))


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, content) of a turn's text with the reasoning inline: what precedes the last
    ``</think>`` (its ``<think>`` dropped) and what follows it, each stripped; (None, text)
    without one."""
    if THINK_END not in text:
        return None, text.strip()
    before, _, after = text.rpartition(THINK_END)
    before = before.strip()
    if before.startswith(THINK_START):
        before = before[len(THINK_START) :]
    return before.strip("\n") or None, after.strip()


def from_chat_message(message: dict[str, Any]) -> ParsedTurn:
    """The turn an OpenAI-compatible ``/v1/chat/completions`` answered: its ``content``, its
    reasoning (``reasoning_content`` as vLLM and DeepSeek name it, ``reasoning`` as newer vLLM
    and OpenRouter do, else inline ``<think>`` tags) and its ``tool_calls``, which the server
    parsed (arguments as a JSON string, or an object)."""
    content = message.get("content") or ""
    if not isinstance(content, str):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    reasoning = next(
        (message[k] for k in ("reasoning_content", "reasoning") if message.get(k)), None
    )
    if reasoning is None:
        reasoning, content = split_reasoning(content)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ToolCallParseError(f"tool_calls is {type(calls).__name__}, not a list")
    reasoning = str(reasoning).strip("\n") if reasoning else None
    return ParsedTurn(content.strip(), reasoning, [_call(c) for c in calls])


class ResponseParser:
    """Reads assistant turns with a response template (see the module docstring), through
    transformers' ``parse_response`` (what ``tokenizer.parse_response`` runs on text).

    ``prefixed``: the template anchors on the prompt (a model's own ``response_template``), so
    the prompt text is passed as ``prefix``; the default template reads the turn alone."""

    def __init__(self, template: dict[str, Any], *, prefixed: bool, name: str = "") -> None:
        self.template, self.prefixed, self.name = template, prefixed, name

    def parse(self, text: str, prompt: str = "", tools: list | None = None) -> ParsedTurn:
        from transformers.utils.chat_parsing import parse_response

        if not self.prefixed and THINK_END in text and THINK_START not in text:
            text = THINK_START + text  # the prompt opened the reasoning (Qwen3's enable_thinking)
        try:
            parsed = parse_response(
                text, self.template, prefix=prompt if self.prefixed else "", tools=tools
            )
        except ValueError as exc:
            raise ToolCallParseError(str(exc).splitlines()[0]) from None
        if not isinstance(parsed, dict):
            raise ToolCallParseError(f"the response template gave {type(parsed).__name__}")
        reasoning = next(
            (parsed[k] for k in ("reasoning_content", "thinking", "reasoning") if parsed.get(k)),
            None,
        )
        content = parsed.get("content") or ""
        if isinstance(content, list) and all(isinstance(part, str) for part in content):
            # a repeated content field: the text before and after the calls, all of it
            content = "\n".join(part.strip() for part in content if part.strip())
        if not isinstance(content, str):
            raise ToolCallParseError("the response template's content is not text")
        calls = parsed.get("tool_calls") or []
        if isinstance(calls, dict):
            calls = [calls]
        return ParsedTurn(
            content.strip(),
            str(reasoning).strip("\n") if reasoning else None,
            [_call(c) for c in calls],
        )


def response_parser(tokenizer, template: dict[str, Any] | None, end_of_turn: str) -> ResponseParser:
    """The parser for a model: ``template``, else the tokenizer's ``response_template``
    (``tokenizer`` may be None), else the bundled ``tool_call_json``
    (:mod:`natscale.agent.response_templates`)."""
    from natscale.agent.response_templates import DEFAULT, response_template

    if template is None:
        template = getattr(tokenizer, "response_template", None)
    if template is not None:
        return ResponseParser(template, prefixed=True, name="the given response template")
    return ResponseParser(response_template(DEFAULT, end_of_turn), prefixed=False, name=DEFAULT)


def single_parameter(schema: dict[str, Any]) -> str | None:
    """The one parameter of a tool that takes one (a built-in's), else None."""
    props = schema["function"].get("parameters", {}).get("properties") or {}
    return next(iter(props)) if len(props) == 1 else None


def finish_answer_key(schema: dict[str, Any] | None) -> str:
    """The name of ``finish``'s one parameter in its schema (OpenAI form): ``answer``, or what
    ``tools.schemas`` renamed it to; ``answer`` without a schema."""
    param = single_parameter(schema) if schema else None
    return param or FINISH_ARGUMENT


def finish_answer(arguments: Any, answer_key: str) -> str | None:
    """The answer a ``finish`` call with ``arguments`` gives: its one argument ``answer_key`` (as
    JSON text when it is not a string); None when the arguments are anything else (the agent
    loop answers such a call with an error result and the episode goes on)."""
    if not isinstance(arguments, dict) or set(arguments) != {answer_key}:
        return None
    answer = arguments[answer_key]
    return answer if isinstance(answer, str) else json.dumps(answer)


def call_id(turn: int, index: int) -> str:
    """The id of the ``index``-th call of turn ``turn``: nine letters and digits, as Mistral's
    templates require (``call01000``)."""
    return f"call{turn % 100:02d}{index % 1000:03d}"
