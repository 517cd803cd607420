"""Synthetic ReAct math trajectories in the NAT release format, for benchmarks.

Each trajectory is a GSM8K-like question with Thought/Action/Observation turns, padded with
extra calculation steps until it reaches about ``target_tokens`` tokens under the tokenizer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = (
    "Solve a math problem with interleaving Thought, Action, Observation steps. Thought can "
    "reason about the current situation, and Action can be two types:\n(1) calculate[expression], "
    "which calculates the expression and returns the answer.\n(2) finish[answer], which returns "
    "the answer and finishes the task."
)
PROMPT = {
    "task": "math",
    "instruction": INSTRUCTION,
    "acknowledgement": "I've understood your instruction, start please.",
    "templates": {
        "plain": "Question: {question}",
        "success": "Question: {question}. Generate a sequence of Thought and Action steps to "
        "solve the problem correctly.",
        "failure": "Question: {question}. Generate a sequence of Thought and Action steps. But "
        "incorrectly solve the problem.",
    },
}
NAMES = ["Janet", "Tom", "Maria", "Ahmed", "Li", "Olga", "Kofi", "Priya"]
ITEMS = ["apples", "books", "marbles", "stamps", "pencils", "cookies", "tickets", "shells"]


def _step(rng: random.Random, k: int) -> list[dict]:
    a, b, op = rng.randint(2, 999), rng.randint(2, 99), rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    thought = (
        f"Thought: Step {k}: I have {a} and need to combine it with {b} using {op} to keep "
        f"track of the running total of {rng.choice(ITEMS)} before moving on."
    )
    return [
        {
            "role": "assistant",
            "content": f"{thought}\nAction: calculate[{a} {op} {b}]",
            "loss": True,
        },
        {"role": "user", "content": f"Observation: {value}", "loss": False},
    ]


def make(n: int, tokenizer, target_tokens: int = 1000, seed: int = 0) -> tuple[list, list]:
    """``n`` trajectories (about ``target_tokens`` tokens each) and their questions."""
    rng = random.Random(seed)

    # tokens per ReAct step (two turns, with ~6 template tokens each) and for the fixed prompt
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    probe = _step(random.Random(1), 1)
    per_step = sum(count(m["content"]) + 6 for m in probe)
    fixed = count(INSTRUCTION) + count(PROMPT["templates"]["success"]) + 60
    steps = max(1, round((target_tokens - fixed) / per_step))
    trajs, questions = [], []
    for i in range(n):
        who, what = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = rng.randint(2, 500), rng.randint(2, 500)
        questions.append(
            {
                "id": f"q{i}",
                "question": f"{who} has {a} {what} and buys {b} more. How many {what} now?",
                "answer": f"{a} + {b} = {a + b}\n#### {a + b}",
            }
        )
        ok = rng.random() < 0.3
        pred = a + b if ok else a + b + rng.randint(1, 9)
        conv = [
            m for k in range(rng.randint(steps // 2, steps + steps // 2)) for m in _step(rng, k)
        ]
        conv += [
            {
                "role": "assistant",
                "content": f"Thought: Done.\nAction: finish[{pred}]",
                "loss": True,
            },
            {"role": "user", "content": "Observation: Episode finished", "loss": False},
        ]
        info = {
            "reward": ok,
            "pred": str(pred),
            "gt": str(a + b),
            "finished": True,
            "kind": "synth",
        }
        trajs.append({"id": f"q{i}", "source": 0.2, "info": info, "conversations": conv})
    return trajs, questions


def write(out: Path, trajs: list, questions: list) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "trajectories": out / "trajectories.json",
        "questions": out / "questions.jsonl",
        "prompt": out / "prompt.json",
    }
    paths["trajectories"].write_text(json.dumps(trajs))
    paths["questions"].write_text("".join(json.dumps(q) + "\n" for q in questions))
    paths["prompt"].write_text(json.dumps(PROMPT))
    return paths
