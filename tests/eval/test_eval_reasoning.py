"""A reasoning model behind an OpenAI-compatible endpoint: its ``<think>`` blocks in the loop.

The endpoint is a small HTTP server on 127.0.0.1 that answers ``/v1/completions`` the way a
reasoning model would (a stand-in for vLLM: the replies are fixed per question and turn). The
prompts go through a chat template with Qwen3's habits (tests/data/test_reasoning_turns.py),
so the agent's earlier turns reach the next prompt as the template shows them.
"""

from __future__ import annotations

import json

import pytest

from natscale.config.eval import EvalConfig
from natscale.data.render import load_tokenizer
from natscale.eval.run import run_eval, summary_line

from ..data.test_reasoning_turns import THINKS
from .conftest import DATA, TOKENIZER, completions_endpoint, read_jsonl

# per question, the model's turns: (text, finish_reason)
REPLIES = {
    "Question: What is 2 + 2?": [
        (
            "<think>\nAction: finish[5] would be a guess.\n</think>\n\nThought: add.\n"
            "Action: calculate[2 + 2]",
            "stop",
        ),
        ("<think>\nIt is 4.\n</think>\n\nAction: finish[4]", "stop"),
    ],
    "Question: What is 3 + 3?": [("<think>\nLet me think about 3 + 3 for a long", "length")],
}


def _reply(prompt: str) -> tuple[str, str]:
    question = next(q for q in REPLIES if q in prompt)
    return REPLIES[question][prompt.count("Observation: ")]  # one after each turn so far


@pytest.fixture
def endpoint():
    with completions_endpoint(_reply) as served:
        yield served


def test_a_reasoning_models_episodes(endpoint, tmp_path):
    url, prompts = endpoint
    tok = load_tokenizer(TOKENIZER)
    tok.add_tokens(["<think>", "</think>"])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = THINKS
    tok.save_pretrained(tmp_path / "tok")
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        "".join(
            json.dumps(
                {"id": f"q{n}", "question": f"What is {n} + {n}?", "answer": f"#### {2 * n}"}
            )
            + "\n"
            for n in (2, 3)
        )
    )
    fields = {
        "backend": "openai",
        "model": url,
        "output": str(tmp_path / "run"),
        "questions": [str(questions)],
        "prompt": {"file": str(DATA / "prompt.json"), "tokenizer": str(tmp_path / "tok")},
        "openai": {"concurrency": 1},
    }
    summary = run_eval(EvalConfig.model_validate(fields))
    episodes = {e["id"]: e for e in read_jsonl(tmp_path / "run" / "episodes.jsonl")}
    two, three = episodes["q2"]["info"], episodes["q3"]["info"]
    # the action written while thinking is not the turn's action
    assert two["pred"] == "4" and two["reward"] is True and two["truncated_turns"] == 0
    assert three["failure"] == "unparseable_action" and three["truncated_turns"] == 1
    assert summary["truncated_turns"] == 1
    assert "(1 turn cut at loop.max_new_tokens)" in summary_line(summary)
    # the second prompt shows the first turn as the template does: without its reasoning
    second = next(p for p in prompts if "Observation: 4" in p)
    assert "Thought: add.\nAction: calculate[2 + 2]<|im_end|>" in second
    assert "would be a guess" not in second and second.endswith("<|im_start|>assistant\n")
