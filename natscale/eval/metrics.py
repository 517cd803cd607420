"""Task metrics the NAT paper's way.

Math (GSM8K style): the gold answer ends with ``#### <number>``; the number with its commas removed
must **exactly equal** the ``finish[...]`` argument, so ``18.0`` and ``$18`` do not match ``18``.
"""

from __future__ import annotations

import re

_GSM8K_ANSWER = re.compile(r"#### (-?[0-9.,]+)")


def extract_gsm8k_answer(answer: str) -> str:
    """``"... #### 1,200"`` -> ``"1200"``. Raises ValueError if there is no ``#### <number>``."""
    match = _GSM8K_ANSWER.search(answer)
    if match is None:
        raise ValueError(f"gold answer has no '#### <number>' line: {answer[-80:]!r}")
    return match.group(1).strip().replace(",", "")


def math_reward(prediction: str | None, answer: str) -> bool:
    """True iff ``prediction`` (the ``finish[...]`` argument) exactly equals the gold number."""
    return prediction is not None and prediction == extract_gsm8k_answer(answer)
