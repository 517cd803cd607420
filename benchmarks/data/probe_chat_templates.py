"""Probe chat templates through natscale's masking: what each trains, or why it is refused.

    python benchmarks/data/probe_chat_templates.py path/to/qwen3.jinja path/to/llama31.jinja ...

For each Jinja chat template (a model's ``chat_template.jinja``, or the ``chat_template`` field
of its ``tokenizer_config.json`` saved as a file), on the example tokenizer with the template's
special tokens added, it renders three kinds of conversation through ``Renderer(tok, "hf")``:

- ``react``: the paper's Thought/Action loop, observations as ``user`` and as ``tool`` turns,
  with and without a system message, ending with an observation or with the assistant (8 cases);
- ``tool calls``: OpenAI ``tool_calls`` with a ``calculate`` schema, with and without text beside
  the call, ending with a user turn or with the assistant (4 cases);
- ``reasoning``: the ReAct loop with each assistant turn's reasoning in ``<think>`` tags,
  observations as ``user`` and as ``tool`` turns, as one example (``render.turns: all``) or one
  example per trained turn (``each``) (4 cases); such a case is ``ok`` only when, besides,
  every trained turn's reasoning is in its trained tokens.

For each template it also says which response template ``natscale eval`` (``loop.protocol:
tool_calls``) reads its tool calls with: the first that reads back a call and an answer as the
template writes them (``--response-template`` names one to check instead), or what each read.

``--kwargs`` renders them all with more template variables (``render.chat_template_kwargs``);
``--turns each`` cuts the ``react`` and ``tool calls`` cases into one conversation per trained
turn, as ``render.turns: each`` does.

A case is ``ok`` when it renders and every trained turn's tokens are exactly the tokens after its
generation prompt (the conversation before it with ``add_generation_prompt``); otherwise the
refusal's first words are shown. Prints one line per case and a count per template; nothing is
written. The templates of published models are not shipped with natscale: bring your own files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from natscale.config.eval import PromptConfig  # noqa: E402
from natscale.data.render import Message, Renderer, TemplateError, load_tokenizer  # noqa: E402
from natscale.eval.errors import EvalError  # noqa: E402
from natscale.eval.prompting import Prompter  # noqa: E402
from natscale.eval.tool_parsing import build_parser  # noqa: E402

# special-token spellings of the common families: <|...|>, <｜...｜>, Gemma's, Mistral's [INST]
SPECIAL = re.compile(
    r"<[|｜][^<>'\"\s]{1,40}?[|｜]>|<(?:start|end)_of_turn>|\[/?(?:INST|TOOL_CALLS|"
    r"AVAILABLE_TOOLS|TOOL_RESULTS|SYSTEM_PROMPT)\]"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculate",
            "description": "Evaluate arithmetic.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]


def react(system: bool, final_observation: bool) -> list[Message]:
    out = [Message("system", "You are a careful agent.")] if system else []
    out += [
        Message("user", "Solve a math problem."),
        Message("assistant", "I've understood your instruction, start please."),
        Message("user", "Question: What is 5 + 7?. Solve it correctly."),
        Message("assistant", "Thought: add them.\nAction: calculate[5 + 7]", True),
        Message("observation", "Observation: 12"),
        Message("assistant", "Thought: done.\nAction: finish[12]", True),
    ]
    return out + (
        [Message("observation", "Observation: Episode finished")] if final_observation else []
    )


def tool_calls(text: str, final_user: bool) -> list[Message]:
    call = {"name": "calculate", "arguments": {"expression": "5 + 7"}, "id": "call00001"}
    out = [
        Message("user", "Question: What is 5 + 7?"),
        Message("assistant", text, True, [call]),
        Message("observation", "12", name="calculate"),
        Message("assistant", "The answer is 12.", True),
    ]
    return out + ([Message("user", "Thanks")] if final_user else [])


THOUGHTS = ("Add them first.", "The sum is known.")


def reasoning(each: bool) -> list[list[Message]]:
    """The ReAct loop with its thoughts in ``<think>`` tags: one conversation, or (``each``) one
    per trained turn, ending with it, only it trained (as ``render.turns: each`` cuts it)."""
    out = [
        Message("user", "Question: What is 5 + 7?. Solve it correctly."),
        Message("assistant", f"<think>\n{THOUGHTS[0]}\n</think>\n\nAction: calculate[5 + 7]", True),
        Message("observation", "Observation: 12"),
        Message("assistant", f"<think>\n{THOUGHTS[1]}\n</think>\n\nAction: finish[12]", True),
    ]
    return per_turn(out) if each else [out]


def per_turn(messages: list[Message]) -> list[list[Message]]:
    """One conversation per trained turn, ending with it, only it trained (``turns: each``)."""
    return [
        [
            Message(m.role, m.content, j == k, m.tool_calls, m.name)
            for j, m in enumerate(messages[: k + 1])
        ]
        for k, x in enumerate(messages)
        if x.train
    ]


def check(renderer: Renderer, messages: list[Message], tools: list | None) -> str:
    """``ok``, or why not: the refusal, or the turn whose trained tokens differ."""
    try:
        enc = renderer.encode(messages, tools=tools)
    except TemplateError as exc:
        return f"refused: {str(exc)[:110]}"
    tok = renderer.template.tokenizer
    thoughts = [t for t in THOUGHTS for m in messages if m.train and t in m.content]
    trained = tok.decode(enc.ids[enc.mask]) if thoughts else ""
    lost = [t for t in thoughts if t not in trained]
    if lost:
        return f"BAD: the trained tokens leave out the reasoning {lost}"
    ids, mask = enc.ids.tolist(), enc.mask.tolist()
    written = [False] * len(ids)
    for k, msg in enumerate(messages):
        if msg.role == "assistant" and msg.train:
            prompt = renderer.template.pieces(messages[:k], generation=True, tools=tools)
            prompt_ids = renderer.encoder.encode(prompt).ids.tolist()
            if ids[: len(prompt_ids)] != prompt_ids:
                return f"BAD: turn {k}'s prompt is not where its training starts"
            end = len(prompt_ids)
            while end < len(ids) and mask[end]:
                written[end] = True
                end += 1
    return "ok" if written == mask else "BAD: trained tokens that follow no prompt"


def calls_read_with(tok, kwargs: dict | None, template: str | None) -> str:
    """Which response template ``natscale eval`` reads this chat template's tool calls with."""
    cfg = PromptConfig(template="hf", observation_role="tool", chat_template_kwargs=kwargs)
    prompter = Prompter(cfg, tok)
    prompter.tools = TOOLS
    try:
        return f"tool calls read with {build_parser(template, prompter).name}"
    except EvalError as exc:
        return "tool calls NOT read: " + " | ".join(str(exc).splitlines()[1:-1])[:300]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("templates", nargs="+", type=Path, help="chat template files (Jinja)")
    ap.add_argument(
        "--kwargs",
        type=json.loads,
        default=None,
        help="render.chat_template_kwargs as JSON, e.g. '{\"enable_thinking\": false}'",
    )
    ap.add_argument("--turns", choices=("all", "each"), default="all", help="render.turns")
    ap.add_argument(
        "--response-template",
        default=None,
        help="prompt.response_template: a bundled name or a JSON file (default: the first "
        "that reads the calls back)",
    )
    args = ap.parse_args()
    for path in args.templates:
        source = path.read_text(encoding="utf-8")
        tok = load_tokenizer(REPO / "examples" / "tokenizer")
        tok.add_special_tokens({"additional_special_tokens": sorted(set(SPECIAL.findall(source)))})
        tok.add_tokens([t for t in ("<think>", "</think>") if t in source])  # Qwen3's: not special
        tok.chat_template = source
        counts: Counter = Counter()
        cases = [
            (f"react, observations as {role}, system {system}, ends with observation {final}",
             role, react(system, final), None)
            for role in ("user", "tool") for system in (False, True) for final in (True, False)
        ] + [
            (f"tool calls, text {bool(text)}, ends with user {final}", "tool",
             tool_calls(text, final), TOOLS)
            for text in ("", "I will compute it.") for final in (True, False)
        ] + [
            (f"reasoning, observations as {role}, turns {'each' if each else 'all'}", role,
             reasoning(each), None)
            for role in ("user", "tool") for each in (False, True)
        ]  # fmt: skip
        for name, role, conversations, tools in cases:
            renderer = Renderer(tok, "hf", observation_role=role, chat_template_kwargs=args.kwargs)
            if isinstance(conversations[0], Message):
                each = args.turns == "each"
                conversations = per_turn(conversations) if each else [conversations]
            verdicts = [check(renderer, messages, tools) for messages in conversations]
            verdict = next((v for v in verdicts if v != "ok"), "ok")
            counts["ok" if verdict == "ok" else verdict.split(":")[0]] += 1
            print(f"{path.stem}: {name}: {verdict}")
        print(f"{path.stem}: {calls_read_with(tok, args.kwargs, args.response_template)}")
        print(f"{path.stem}: {dict(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
