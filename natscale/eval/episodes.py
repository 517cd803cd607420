"""``episodes.jsonl``: one finished episode per line, in the NAT release format.

::

    {"id": "math-00017", "sample": 0, "question": "...", "answer": "... #### 18", "source": 0.0,
     "info": {"reward": true, "pred": "18", "f1": 1.0, "gt": "18", "finished": true,
              "failure": null, "turns": 3, "generated_tokens": 61, "truncated_turns": 0,
              "marker": "success"},
     "conversations": [{"role": "assistant", "content": "Thought: ...", "loss": true},
                       {"role": "user", "content": "Observation: 6", "loss": false}, ...]}

With native tool calls (``loop.protocol: tool_calls``) ``conversations`` is replaced by the
OpenAI chat form, which ``natscale prepare`` reads with ``format: openai`` (``success_field:
info.reward``; ``question_turn: 1`` when the task prompt has an instruction turn)::

    "messages": [{"role": "user", "content": "What is 17 * 23?"},
                 {"role": "assistant", "content": null, "tool_calls": [{"id": "call01000",
                  "type": "function", "function": {"name": "calculate",
                  "arguments": "{\"expression\": \"17 * 23\"}"}}]},
                 {"role": "tool", "tool_call_id": "call01000", "name": "calculate",
                  "content": "391"}, ...],
    "tools": [{"type": "function", "function": {"name": "calculate", ...}}, ...]

The prompt messages come first as the model saw them, the question without its NAT marker.

``source`` is the sampling temperature, as in the paper's release. The file is appended to and
flushed as each episode ends, so ``natscale prepare`` (``format: nat``) reads it directly and an
interrupted run resumes from it: a resumed run skips every ``(id, sample)`` already there and
drops a last line cut short by a kill.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from natscale.agent.loop import Episode
from natscale.agent.scoring import extract_gold, score_answer
from natscale.atomic import EVAL_EPISODES
from natscale.data.render.messages import Message
from natscale.eval.errors import EvalError

EPISODES = EVAL_EPISODES  # one name, which prepare also knows (natscale.atomic)


def openai_messages(prompt: list[Message], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The OpenAI chat form of an episode with native tool calls: ``prompt`` then its turns."""
    out: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in prompt]
    for turn in history:
        msg = {k: v for k, v in turn.items() if k not in ("loss", "tool_calls")}
        if turn.get("tool_calls"):
            msg["content"] = turn["content"] or None
            msg["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                }
                for c in turn["tool_calls"]
            ]
        out.append(msg)
    return out


def episode_record(
    ep: Episode,
    task: str,
    *,
    temperature: float,
    marker: str,
    tool_calls: tuple[list[Message], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The record of a finished episode; ``tool_calls``: (prompt messages without the marker,
    tool schemas) of an episode with native tool calls, written in the OpenAI chat form."""
    gold = ep.question.answer
    score = score_answer(task, ep.pred, gold)
    if tool_calls is None:
        turns: dict[str, Any] = {"conversations": ep.conversations()}
    else:
        turns = {"messages": openai_messages(tool_calls[0], ep.history), "tools": tool_calls[1]}
    return {
        "id": ep.question.id,
        "sample": ep.sample,
        "question": ep.question.question,
        "answer": gold,
        "source": temperature,
        "info": {
            "reward": score.correct,
            "pred": ep.pred,
            "f1": score.f1,
            "gt": gold if isinstance(gold, bool) else extract_gold(str(gold)),
            "finished": ep.pred is not None,
            "failure": ep.failure,
            "turns": ep.turns,
            "generated_tokens": ep.generated_tokens,
            "truncated_turns": ep.truncated_turns,
            "error": ep.error,
            "marker": marker,
        },
        **turns,
    }


def read_episodes(path: Path, *, repair: bool) -> list[dict[str, Any]]:
    """The records of ``path``. Text after the last newline is a line cut short by a kill: it
    is ignored and, with ``repair``, cut from the file (its episode runs again). A bad complete
    line is an error naming the line."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete_end = raw.rfind(b"\n") + 1
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(raw[:complete_end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise EvalError(f"{path}:{lineno}: not JSON ({exc}); not an episodes file") from None
        if not isinstance(rec, dict) or "id" not in rec or "sample" not in rec:
            raise EvalError(f"{path}:{lineno}: not an episode record (no id / sample)")
        records.append(rec)
    if repair and complete_end < len(raw):
        with path.open("r+b") as fh:
            fh.truncate(complete_end)
    return records


class EpisodeWriter:
    """Appends records to ``episodes.jsonl``, one ``write`` + flush per episode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.fh.flush()

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
