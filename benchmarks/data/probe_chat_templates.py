"""Probe chat templates through natscale's masking: what each trains, or why it is refused.

    python benchmarks/data/probe_chat_templates.py path/to/qwen3.jinja path/to/llama31.jinja ...

For each Jinja chat template (a model's ``chat_template.jinja``, or the ``chat_template`` field
of its ``tokenizer_config.json`` saved as a file), on the example tokenizer with the template's
special tokens added, it renders two kinds of conversation through ``Renderer(tok, "hf")``:

- ``react``: the paper's Thought/Action loop, observations as ``user`` and as ``tool`` turns,
  with and without a system message, ending with an observation or with the assistant (8 cases);
- ``tool calls``: OpenAI ``tool_calls`` with a ``calculate`` schema, with and without text beside
  the call, ending with a user turn or with the assistant (4 cases).

A case is ``ok`` when it renders and every trained turn's tokens are exactly the tokens after its
generation prompt (the conversation before it with ``add_generation_prompt``); otherwise the
refusal's first words are shown. Prints one line per case and a count per template; nothing is
written. The templates of published models are not shipped with natscale: bring your own files.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from natscale.data.render import Message, Renderer, TemplateError, load_tokenizer  # noqa: E402

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


def check(renderer: Renderer, messages: list[Message], tools: list | None) -> str:
    """``ok``, or why not: the refusal, or the turn whose trained tokens differ."""
    try:
        enc = renderer.encode(messages, tools=tools)
    except TemplateError as exc:
        return f"refused: {str(exc)[:110]}"
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("templates", nargs="+", type=Path, help="chat template files (Jinja)")
    args = ap.parse_args()
    for path in args.templates:
        source = path.read_text(encoding="utf-8")
        tok = load_tokenizer(REPO / "examples" / "tokenizer")
        tok.add_special_tokens({"additional_special_tokens": sorted(set(SPECIAL.findall(source)))})
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
        ]  # fmt: skip
        for name, role, messages, tools in cases:
            renderer = Renderer(tok, "hf", observation_role=role)
            verdict = check(renderer, messages, tools)
            counts["ok" if verdict == "ok" else verdict.split(":")[0]] += 1
            print(f"{path.stem}: {name}: {verdict}")
        print(f"{path.stem}: {dict(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
