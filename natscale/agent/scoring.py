"""Answer scoring the NAT paper's way, in one place for data labelling and evaluation.

- **math** (GSM8K): the gold answer ends with ``#### <number>``; that number with its commas
  removed must **exactly equal** the ``finish[...]`` argument (surrounding spaces ignored), so
  ``18.0`` and ``$18`` do not match ``18``.
- **qa** (HotpotQA): exact match and token F1 after SQuAD normalisation (lower case, no
  punctuation / articles / extra spaces). A gold ``True``/``False`` matches ``yes``/``no``.
- **yesno** (StrategyQA): ``finish[Yes|No]`` against a boolean gold; anything else ("Unclear",
  "Maybe") is wrong.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

_GSM8K_ANSWER = re.compile(r"####\s*(-?[0-9.,]+)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_BOOL_GOLD = {"true": "yes", "false": "no"}
TASKS = ("math", "qa", "yesno")


def extract_gsm8k_answer(answer: str) -> str:
    """``"... #### 1,200"`` -> ``"1200"``. Raises ValueError if there is no ``#### <number>``."""
    match = _GSM8K_ANSWER.search(answer)
    if match is None:
        raise ValueError(f"gold answer has no '#### <number>' line: {answer[-80:]!r}")
    return match.group(1).strip().replace(",", "")


def extract_gold(answer: str) -> str:
    """GSM8K ``"... #### 1,234"`` -> ``"1234"``; any other answer stripped."""
    if "####" in answer:
        return answer.split("####")[-1].strip().replace(",", "")
    return answer.strip()


def math_exact(prediction: str | None, gold: str) -> bool:
    """The paper's GSM8K rule on an already extracted gold string (see :func:`extract_gold`)."""
    return prediction is not None and prediction.strip() == gold


def math_reward(prediction: str | None, answer: str) -> bool:
    """True iff ``prediction`` (the ``finish[...]`` argument) exactly equals the gold number."""
    return math_exact(prediction, extract_gsm8k_answer(answer))


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str | None, gold: str) -> bool:
    """SQuAD-normalised exact match (the paper's HotpotQA reward)."""
    if pred is None:
        return False
    gold_n = normalize_answer(gold)
    # a gold True/False also matches yes/no (bool answers written as Python bools)
    return normalize_answer(pred) in (gold_n, _BOOL_GOLD.get(gold_n, gold_n))


def f1_score(pred: str | None, gold: str) -> float:
    """SQuAD token F1 between ``pred`` and ``gold`` (0.0 for a missing prediction)."""
    if pred is None:
        return 0.0
    gold_n = normalize_answer(gold)
    pred_n = normalize_answer(pred)
    if pred_n and pred_n == gold_n:  # the literal answer, "True" for a gold True too
        return 1.0
    gold_n = _BOOL_GOLD.get(gold_n, gold_n)
    # an answer that is yes, no or noanswer must match exactly (HotpotQA's rule: the whole
    # answer, so "No Doubt" or "the Yes Men" still get partial credit)
    if pred_n in ("yes", "no", "noanswer") or gold_n in ("yes", "no", "noanswer"):
        return float(pred_n == gold_n)
    p, g = pred_n.split(), gold_n.split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def yes_no(pred: str | None) -> bool | None:
    """``Yes`` -> True, ``No`` -> False (SQuAD-normalised); anything else None."""
    if pred is None:
        return None
    return {"yes": True, "no": False}.get(normalize_answer(pred))


def gold_bool(gold: object) -> bool | None:
    """A boolean gold answer: ``True``/``False`` or the strings yes/no/true/false."""
    if isinstance(gold, bool):
        return gold
    return {"yes": True, "true": True, "no": False, "false": False}.get(normalize_answer(gold))


@dataclass(frozen=True)
class Score:
    """One episode's score: ``correct`` is the task's headline rule, ``f1`` its token F1."""

    correct: bool
    f1: float


def score_answer(task: str, pred: str | None, gold: object) -> Score:
    """Score ``pred`` against ``gold`` under the ``task``'s rule (one of :data:`TASKS`).

    ``gold`` is the question file's answer: for math the whole GSM8K answer (the text after
    ``####`` counts) or the bare number; for yesno a bool or yes/no text.
    """
    if task == "math":
        gold_s = extract_gold(str(gold))
        ok = math_exact(pred, gold_s)
        return Score(ok, float(ok))
    if task == "qa":
        return Score(exact_match(pred, str(gold)), f1_score(pred, str(gold)))
    if task == "yesno":
        want = gold_bool(gold)
        ok = want is not None and yes_no(pred) == want
        return Score(ok, float(ok))
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
