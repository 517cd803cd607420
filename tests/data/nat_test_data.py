"""Small records and file writers shared by the data-pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


NAT_TRAJ = {
    "id": "q1",
    "source": 0.2,
    "info": {"reward": True, "pred": "6", "gt": "6", "finished": True, "kind": "test"},
    "conversations": [
        {"role": "assistant", "content": "Thought: add.\nAction: calculate[2 + 4]", "loss": True},
        {"role": "user", "content": "Observation: 6", "loss": False},
        {"role": "assistant", "content": "Thought: done.\nAction: finish[6]", "loss": True},
        {"role": "user", "content": "Observation: Episode finished", "loss": False},
    ],
}
QUESTION = {"id": "q1", "question": "What is 2 + 4?", "answer": "2 + 4 = 6\n#### 6"}
PROMPT = {
    "task": "math",
    "instruction": "Solve a math problem with interleaving Thought, Action, Observation steps.",
    "acknowledgement": "I've understood your instruction, start please.",
    "templates": {
        "plain": "Question: {question}",
        "success": "Question: {question}. Solve the problem correctly.",
        "failure": "Question: {question}. But incorrectly solve the problem.",
    },
}
