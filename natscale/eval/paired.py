"""Did one agent do better than another on the same questions? The paired difference.

Two evaluations of the same test questions are compared question by question: each question's
score is its mean reward over its samples (as :mod:`natscale.eval.metrics` scores it), the
difference is the mean over the questions both evaluated of ``other - base``, and its 95%
interval resamples those questions with replacement (a paired bootstrap: the questions' own
difficulty cancels, so it is narrower than comparing the two runs' separate intervals). The
questions where one did better and where it did worse are counted, and the two-sided sign test
on them gives a p-value (with one sample per question it is the exact McNemar test).
"""

from __future__ import annotations

import json
from collections import defaultdict
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from natscale.eval.episodes import EPISODES, read_episodes
from natscale.eval.errors import EvalError


def question_scores(run: str | Path) -> dict[str, tuple[str, float]] | None:
    """Per question id of the run's ``episodes.jsonl``: (question text, mean reward over its
    samples), over the questions and samples its ``summary.json`` scored; None when the run has
    no episodes file (a ``summary.json`` given alone)."""
    folder = Path(run)
    path = folder / EPISODES if folder.is_dir() else folder.with_name(EPISODES)
    if not path.is_file():
        return None
    covered = _covered(path.with_name("summary.json"))
    rewards: dict[str, list[float]] = defaultdict(list)
    texts: dict[str, str] = {}
    for lineno, rec in enumerate(read_episodes(path, repair=False), 1):
        try:
            qid, reward = str(rec["id"]), float(bool(rec["info"]["reward"]))
            if covered is not None and (qid not in covered[0] or int(rec["sample"]) >= covered[1]):
                continue  # outside what the summary scored
        except (KeyError, TypeError, ValueError):
            raise EvalError(f"{path}: record {lineno} has no info.reward or sample") from None
        rewards[qid].append(reward)
        texts[qid] = str(rec.get("question", ""))
    return {q: (texts[q], float(np.mean(r))) for q, r in rewards.items()}


def _covered(summary: Path) -> tuple[set[str], int] | None:
    """(question ids, samples per question) that ``summary.json`` scored; None when it does not
    say (written before natscale recorded them, or absent or unreadable: all episodes count)."""
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
        ids, n = data["question_ids"], data["sampling"]["n"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(ids, list) or not isinstance(n, int):
        return None
    return {str(q) for q in ids}, n


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test: P(a split at least this uneven | each way equally likely)."""
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(better, worse) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(
    base: dict[str, tuple[str, float]],
    other: dict[str, tuple[str, float]],
    *,
    names: tuple[str, str] = ("base", "other"),
    bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """``other - base`` over their shared questions (module docstring). A shared id whose
    question text differs means two different test sets: an EvalError naming it."""
    shared = sorted(base.keys() & other.keys())
    for q in shared:
        if base[q][0] != other[q][0]:
            raise EvalError(
                f"question {q!r} is {base[q][0][:60]!r} in {names[0]} but {other[q][0][:60]!r} "
                f"in {names[1]}: they were not evaluated on the same questions"
            )
    d = np.array([other[q][1] - base[q][1] for q in shared])
    better, worse = int((d > 0).sum()), int((d < 0).sum())
    out: dict[str, Any] = {
        "questions": len(shared),
        "value": round(float(d.mean()), 6) if len(d) else None,
        "ci95": None,
        "better": better,
        "worse": worse,
        "p_sign_test": float(
            f"{sign_test(better, worse):.6g}"
        ),  # 6 significant digits: 4.7e-14, not 0
    }
    if len(d) and bootstrap > 0:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, len(d), size=(bootstrap, len(d)))].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        out["ci95"] = [round(float(lo), 6), round(float(hi), 6)]
    return out
