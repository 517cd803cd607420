"""Evaluation questions: JSON or JSONL files of ``{"id", "question", "answer"}``.

``answer`` is the gold answer (GSM8K style ``... #### 18`` for math, text for QA, a bool or
yes/no for yes/no questions). A line that is not a JSON object, a missing field or a missing
gold answer is an error naming the file and line.
"""

from __future__ import annotations

import os
from pathlib import Path

from natscale.agent.loop import Question
from natscale.data.errors import DataError
from natscale.data.formats.common import field
from natscale.data.formats.reader import iter_records
from natscale.eval.errors import EvalError


def load_questions(paths: list[str | os.PathLike], limit: int | None = None) -> list[Question]:
    out: list[Question] = []
    seen: dict[str, str] = {}
    for path in paths:
        if not Path(path).is_file():
            raise EvalError(f"{path}: questions file not found")
        try:
            for rec in iter_records(path):
                qid = str(field(rec, rec.data, "id", (str, int)))
                question = field(rec, rec.data, "question", str)
                answer = rec.data.get("answer")
                if answer is None or (isinstance(answer, str) and not answer.strip()):
                    raise rec.error(
                        "question has no gold answer",
                        field="answer",
                        reason="no_gold",
                        hint="every evaluation question needs its gold 'answer'",
                    )
                if not isinstance(answer, str | bool | int | float):
                    raise rec.error(
                        f"'answer' must be text, a number or a bool, got {type(answer).__name__}",
                        field="answer",
                        reason="wrong_type",
                    )
                if qid in seen:
                    raise rec.error(
                        f"duplicate question id {qid!r} (first at {seen[qid]})",
                        field="id",
                        reason="duplicate_id",
                    )
                seen[qid] = f"{rec.file} {rec.where}"
                gold = answer if isinstance(answer, bool) else str(answer)
                out.append(Question(qid, question, gold))
                if limit is not None and len(out) >= limit:
                    return out
        except DataError as exc:
            raise EvalError(str(exc)) from None
    if not out:
        raise EvalError(f"no questions in {', '.join(map(str, paths))}")
    return out
