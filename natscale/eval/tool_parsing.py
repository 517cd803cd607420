"""The response parser of an eval with native tool calls (``loop.protocol: tool_calls``).

``prompt.response_template`` is the name of a bundled template
(:mod:`natscale.agent.response_templates`) or a JSON file holding a transformers response
template. Without it the candidates are the tokenizer's own ``response_template`` (models that
ship one), then every bundled template, and the first one that **reads back** what training
teaches is used: a ``finish`` call and a plain answer, each rendered through the model's chat
template as a trained assistant turn after the prompt ``natscale eval`` gives it, must parse to
that call and that text (:mod:`natscale.data.render.readback`). A given template is checked the
same way. None that
reads them back is an error before the first episode, naming what each read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from natscale.agent.response_templates import NAMES, response_template
from natscale.agent.tool_calls import ResponseParser, ToolCallParseError
from natscale.data.render import TemplateError
from natscale.data.render.readback import candidates, reads_back
from natscale.eval.errors import EvalError

FIELD = "prompt.response_template"


def read_response_template(path: str) -> dict:
    file = Path(path)
    try:
        template = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(
            f"{FIELD}: {path}: neither a bundled template ({', '.join(NAMES)}) nor a file"
        ) from None
    except (OSError, ValueError) as exc:
        raise EvalError(f"{FIELD}: {path}: not a JSON file ({exc})") from None
    if not isinstance(template, dict):
        raise EvalError(
            f"{FIELD}: {path}: expected a JSON object (a transformers response template with "
            f"'fields'), got {type(template).__name__}"
        )
    return template


def _candidates(setting: str | None, prompter) -> list[ResponseParser]:
    eot = prompter.end_of_turn
    if setting in NAMES:
        return [ResponseParser(response_template(setting, eot), prefixed=False, name=setting)]
    if setting:
        return [ResponseParser(read_response_template(setting), prefixed=True, name=setting)]
    return candidates(prompter.tokenizer, eot)


def build_parser(setting: str | None, prompter) -> ResponseParser:
    """The parser for ``prompter``'s model (module docstring); an EvalError when none fits."""
    failures: list[str] = []
    for parser in _candidates(setting, prompter):
        try:
            parser.parse("")  # transformers checks the template's shape on first use
        except ToolCallParseError as exc:
            why = f"{parser.name}: not a response template transformers reads ({exc})"
            if setting:
                raise EvalError(f"{FIELD}: {why}") from None
            failures.append(why)
            continue
        if prompter.renderer is None:  # the scripted backend: natscale's own call text
            return parser
        try:
            why = reads_back(prompter.renderer, prompter.tokenizer, parser, prompter.tools)
        except TemplateError as exc:
            print(
                f"natscale eval: note: {parser.name} reads the tool calls, unchecked: the chat "
                f"template cannot render a call turn to check it with ({exc})",
                file=sys.stderr,
            )
            return parser
        if why is None:
            return parser
        failures.append(f"{parser.name}: {why}")
    raise EvalError(
        f"{FIELD}: no response template reads back a tool call as the chat template writes "
        "it:\n  " + "\n  ".join(failures) + "\nwrite one for this model (transformers' "
        f"response-template format) and give its JSON file in {FIELD}"
    )
