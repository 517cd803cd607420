"""Outcome labelling: success from an explicit field or computed against gold answers.

Metrics follow the NAT paper and SQuAD:

- ``exact``: the paper's GSM8K rule: the prediction string equals the gold string after ``####``
  with commas removed ("18.0" != "18").
- ``em``: SQuAD-normalised exact match (lower case, no punctuation / articles / extra spaces);
  the paper's HotpotQA reward. A gold ``True``/``False`` (StrategyQA) matches ``yes``/``no``.
- ``f1``: SQuAD token F1 >= ``f1_threshold``; the score drives the fine-grained buckets.

The prediction is ``meta["pred"]`` when the source recorded one, else the argument of the last
``finish[...]`` action; the gold answer is the question file's ``answer`` (text after ``####``
when present), else ``meta["gt"]``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import replace

from natscale.data.errors import DataError
from natscale.data.trajectory import Outcome, Trajectory

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_FINISH = re.compile(r"finish\[(.*)\]", re.DOTALL)
_BOOL_GOLD = {"true": "yes", "false": "no"}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    gold_n = normalize_answer(gold)
    return normalize_answer(pred) == _BOOL_GOLD.get(gold_n, gold_n)


def f1_score(pred: str | None, gold: str) -> float:
    """SQuAD token F1 between ``pred`` and ``gold`` (0.0 for a missing prediction)."""
    if pred is None:
        return 0.0
    gold_n = normalize_answer(gold)
    p, g = normalize_answer(pred).split(), _BOOL_GOLD.get(gold_n, gold_n).split()
    # yes/no/noanswer must match exactly (SQuAD v2 / HotpotQA convention)
    if (p and p[0] in ("yes", "no", "noanswer")) or (g and g[0] in ("yes", "no", "noanswer")):
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def extract_gold(answer: str) -> str:
    """GSM8K ``"... #### 1,234"`` -> ``"1234"``; other answers stripped."""
    if "####" in answer:
        return answer.split("####")[-1].strip().replace(",", "")
    return answer.strip()


def extract_pred(traj: Trajectory) -> str | None:
    """The argument of the last ``finish[...]`` in the assistant turns, if any."""
    for turn in reversed(traj.turns):
        if turn.role == "assistant":
            m = _FINISH.search(turn.content)
            if m:
                return m.group(1).strip()
    return None


def prediction(traj: Trajectory) -> str | None:
    pred = traj.meta.get("pred")
    return str(pred) if pred is not None else extract_pred(traj)


def gold(traj: Trajectory) -> str | None:
    answer = traj.meta.get("answer")
    if answer:
        return extract_gold(str(answer))
    gt = traj.meta.get("gt")
    return None if gt is None else str(gt)


def label(
    traj: Trajectory,
    *,
    success: str = "field",
    score: str = "auto",
    f1_threshold: float = 1.0,
) -> Outcome:
    """The trajectory's outcome under the labelling rules (see the module docstring).

    ``success``: ``field`` | ``exact`` | ``em`` | ``f1``. ``score``: ``field`` (the source's
    score), ``f1`` (computed), ``auto`` (the source's score, else F1 when a gold answer exists),
    ``none``. Raises :class:`DataError` (reason ``no_outcome``/``no_gold``) when it cannot label.
    """
    out = traj.outcome
    pred, gold_answer = prediction(traj), gold(traj)
    needs_gold = success in ("exact", "em", "f1") or score == "f1"
    if needs_gold and gold_answer is None:
        raise DataError(
            f"trajectory {traj.id!r} has no gold answer to compute {success!r} against",
            field="answer",
            reason="no_gold",
            hint="give a question file with answers, or use outcome.success: field",
        )
    if success == "field":
        if out.success is None:
            raise DataError(
                f"trajectory {traj.id!r} has no success field",
                field="reward",
                reason="no_outcome",
                hint="set the source's success_field, or compute it with outcome.success: em/exact/f1",
            )
        ok = out.success
    elif success == "exact":
        ok = pred is not None and pred.strip() == gold_answer
    elif success == "em":
        ok = exact_match(pred, gold_answer)
    elif success == "f1":
        ok = f1_score(pred, gold_answer) >= f1_threshold
    else:
        raise ValueError(f"unknown success rule {success!r}")
    if score == "none":
        value = None
    elif score == "field":
        value = out.score
    elif score == "f1" or (score == "auto" and out.score is None and gold_answer is not None):
        value = f1_score(pred, gold_answer)
    elif score == "auto":
        value = out.score
    else:
        raise ValueError(f"unknown score rule {score!r}")
    return replace(out, success=bool(ok), score=value)
