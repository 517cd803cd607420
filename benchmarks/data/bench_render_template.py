"""Benchmark rendering through a tokenizer's chat template (``template: hf``), in one process.

    python benchmarks/data/bench_render_template.py            # 2,000 conversations, best of 3
    python benchmarks/data/bench_render_template.py --n 500 --calls 8 --repeat 2

``Renderer.encode_batch`` (render, cut into trained / untrained pieces, tokenise; what a prepare
worker does per chunk) on the example tokenizer, for two kinds of conversation:

- ``react``: the paper's layout (instruction turn, acknowledgement, question, then ``--calls``
  Thought/Action turns and their observations as user turns), every conversation the same layout;
- ``tool calls``: OpenAI-style, a question, then ``--calls`` assistant turns that each call a
  tool (every other one with text beside the call) and their ``tool`` results, then the answer.
  The call arguments differ, so every conversation is a layout of its own;
- ``reasoning``: the ReAct steps of ``react`` with their reasoning in ``<think>`` tags, through a
  Qwen3-style template (written here: it splits a turn at ``</think>`` and drops the reasoning of
  turns before the last user message), observations as ``user`` turns with one example per
  trained turn (``render.turns: each``: ``--calls`` + 1 examples a conversation, counted as
  conversations in the table), and as ``tool`` turns in one example (the reasoning is kept);
  ``long``: the latter with ``--long`` steps (``--n`` / 100 conversations, at least 8): the
  template adds the last turn's ``<think>`` block itself, so every trained turn is cut at its
  generation prompt (before 2026-12-08 each prompt was rendered: quadratic in the length).

Rows: the built-in ``chatml`` template (Python, no Jinja: the baseline; it renders ``<think>`` as
text), and a Qwen-style Jinja
chat template with ``tool_calls`` support (written here: a newline before a call only after text,
as Qwen's) through ``hf``, once as ``prepare`` runs it and once with every turn's generation
prompt rendered (``_shape_tail`` off: what the per-shape prompt check saves). Prints a table and
writes ``benchmarks/results/render_template_<host>_<UTC time>.{json,md}``.

Against an older natscale, run this file from a worktree of it, on the same machine in the same
session (``--always-text``: before 2026-12-07 a call without text did not render through such a
template)::

    git worktree add /tmp/old b5c98c5 && cp benchmarks/data/bench_render_template.py \
        /tmp/old/benchmarks/data/ && python /tmp/old/benchmarks/data/bench_render_template.py \
        --always-text --out /tmp/old-results
    python benchmarks/data/bench_render_template.py --always-text
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from natscale.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from natscale.data.render import Message, Renderer, add_missing_tokens, load_tokenizer  # noqa: E402
from natscale.env import machine  # noqa: E402

# Qwen-style, written for this benchmark: chatml turns, tool calls as <tool_call> JSON after the
# text (a newline only after text), tool results as user turns in <tool_response>
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'tool' %}{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + "
    "'\\n</tool_response><|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{% for c in m['tool_calls'] or [] %}{% if m['content'] or not loop.first %}{{ '\\n' }}"
    "{% endif %}{{ '<tool_call>\\n' + (c['function'] | tojson) + '\\n</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Qwen3-style, written for natscale: a turn's reasoning split from its answer at </think>; the
# last turn always gets a block; turns before the last user message lose theirs
THINK_TEMPLATE = (REPO / "examples" / "chat_templates" / "qwen3_style_thinks.jinja").read_text()


def reasoning(n: int, calls: int, *, each: bool) -> list[list[Message]]:
    """``react`` with each step's reasoning in <think> tags (without the instruction turn);
    ``each``: one conversation per trained turn, ending with it (``render.turns: each``)."""
    out = []
    for conv in react(n, calls):
        m = [conv[2]]
        for x in conv[3:]:
            if x.role == "assistant":
                thought, _, action = x.content.partition("\n")
                why = f"{thought[9:]} The expression comes from the question; compute it."
                x = Message("assistant", f"<think>\n{why}\n</think>\n\n{action}", True)
            m.append(x)
        if not each:
            out.append(m)
            continue
        for k, x in enumerate(m):
            if x.train:
                out.append([Message(y.role, y.content, j == k) for j, y in enumerate(m[: k + 1])])
    return out


def react(n: int, calls: int) -> list[list[Message]]:
    out = []
    for i in range(n):
        m = [
            Message("user", "Solve a math problem with interleaving Thought, Action, Observation."),
            Message("assistant", "I've understood your instruction, start please."),
            Message("user", f"Question: what is {i} * {i + 3} + 7?. Solve it correctly."),
        ]
        for t in range(calls):
            m += [
                Message("assistant", f"Thought: step {t}.\nAction: calculate[{i} * {t} + 7]", True),
                Message("observation", f"Observation: {i * t + 7}"),
            ]
        out.append([*m, Message("assistant", f"Thought: done.\nAction: finish[{i}]", True)])
    return out


def tool_calls(n: int, calls: int, *, always_text: bool = False) -> list[list[Message]]:
    out = []
    for i in range(n):
        m = [Message("user", f"What is {i} * {i + 3} + 7?")]
        for t in range(calls):
            call = {"name": "calculate", "arguments": {"expression": f"{i} * {t} + 7"}}
            text = "" if t % 2 and not always_text else f"Step {t}: I will compute it."
            m += [
                Message("assistant", text, True, [call]),
                Message("observation", str(i * t + 7), name="calculate"),
            ]
        out.append([*m, Message("assistant", f"The answer is {i}.", True)])
    return out


def best_rate(
    tok, name: str, exact: bool, convs: list, repeat: int, role: str = "tool"
) -> tuple[float, int]:
    """(conversations per second, tokens) of ``encode_batch`` with the template ``name``, best of
    ``repeat`` runs, each with a fresh renderer (its caches empty, as a prepare worker starts)."""
    best, tokens = float("inf"), 0
    for _ in range(repeat):
        renderer = Renderer(tok, name, observation_role=role)
        if exact:  # render every turn's generation prompt instead of finding it by shape
            renderer.template._shape_tail = lambda *args: None
        t0 = time.perf_counter()
        encoded = renderer.encode_batch(convs)
        best = min(best, time.perf_counter() - t0)
        tokens = sum(len(e) for e in encoded)
    return len(convs) / best, tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="conversations per data set")
    ap.add_argument("--calls", type=int, default=6, help="tool calls / ReAct steps each")
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    ap.add_argument("--long", type=int, default=128, help="ReAct steps of the long reasoning row")
    ap.add_argument(
        "--always-text",
        action="store_true",
        help="text beside every call (natscale before 2026-12-07 refused a call without text "
        "through such a template: this compares with it)",
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    tok = load_tokenizer(REPO / "examples" / "tokenizer")
    add_missing_tokens(tok, "chatml")
    load_before = os.getloadavg()
    rows = []
    for data, convs, role, template in (
        ("react", react(args.n, args.calls), "tool", CHAT_TEMPLATE),
        (
            "tool calls",
            tool_calls(args.n, args.calls, always_text=args.always_text),
            "tool",
            CHAT_TEMPLATE,
        ),
        (
            "reasoning, user, turns each",
            reasoning(args.n, args.calls, each=True),
            "user",
            THINK_TEMPLATE,
        ),
        ("reasoning, tool, turns all", reasoning(args.n, args.calls, each=False), "tool",
         THINK_TEMPLATE),
        (f"reasoning, tool, turns all, {args.long} steps",
         reasoning(max(8, args.n // 100), args.long, each=False), "tool", THINK_TEMPLATE),
    ):  # fmt: skip
        tok.chat_template = template
        base = None
        for label, name, exact in (
            ("chatml (built-in)", "chatml", False),
            ("hf chat template", "hf", False),
            ("hf, every prompt rendered", "hf", True),
        ):
            if exact and data != "tool calls":
                continue  # no calls: the prompts are rendered once a layout either way
            rate, tokens = best_rate(tok, name, exact, convs, args.repeat, role)
            base = base or rate
            rows.append(
                {
                    "data": data,
                    "renderer": label,
                    "conv_per_s": round(rate, 1),
                    "tokens_per_s": round(rate * tokens / len(convs)),
                    "tokens_per_conv": round(tokens / len(convs), 1),
                    "vs_chatml": round(rate / base, 3),
                }
            )
    cols = ["data", "renderer", "conv_per_s", "tokens_per_s", "tokens_per_conv", "vs_chatml"]
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    print("\n".join(table))

    m = machine(("tokenizers", "transformers", "jinja2"))
    v = m["versions"]
    now = dt.datetime.now(dt.timezone.utc)
    command = " ".join(["python", *sys.argv])
    load = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stem = f"{args.out}/render_template_{m['host']}_{now:%Y%m%dT%H%M%SZ}"  # host may hold dots
    settings = {"n": args.n, "calls": args.calls, "repeat": args.repeat, "long": args.long}
    settings["always_text"] = args.always_text
    record = {"date": now.isoformat(timespec="seconds"), "command": command, "machine": m}
    atomic_write_json(f"{stem}.json", {**record, **settings, "load": load, "results": rows})
    header = (
        f"# Chat-template rendering benchmark ({record['date']})\n\n- command: `{command}`\n"
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs (load average {load})\n"
        f"- python {m['python']}, tokenizers {v['tokenizers']}, transformers "
        f"{v['transformers']}, jinja2 {v['jinja2']}, natscale {(m.get('git_commit') or '?')[:8]}\n"
        f"- {args.n} conversations per data set, {args.calls} steps / calls each"
        f"{' (text beside every call)' if args.always_text else ''} ({max(8, args.n // 100)} "
        f"of {args.long} steps in the long row); "
        f"`Renderer.encode_batch`, one process, best of {args.repeat}\n\n"
    )
    atomic_write_text(f"{stem}.md", header + "\n".join(table) + "\n")
    print(f"bench_render_template: wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
