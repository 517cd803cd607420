"""``episodes.jsonl``: one finished episode per line, in the NAT release format.

::

    {"id": "math-00017", "sample": 0, "question": "...", "answer": "... #### 18", "source": 0.0,
     "info": {"reward": true, "pred": "18", "f1": 1.0, "gt": "18", "finished": true,
              "failure": null, "turns": 3, "generated_tokens": 61, "truncated_turns": 0,
              "marker": "success"},
     "conversations": [{"role": "assistant", "content": "Thought: ...", "loss": true},
                       {"role": "user", "content": "Observation: 6", "loss": false}, ...]}

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
from natscale.eval.errors import EvalError

EPISODES = "episodes.jsonl"


def episode_record(ep: Episode, task: str, *, temperature: float, marker: str) -> dict[str, Any]:
    gold = ep.question.answer
    score = score_answer(task, ep.pred, gold)
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
            "marker": marker,
        },
        "conversations": ep.conversations(),
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
