"""Outcome labelling: success from an explicit field or computed against gold answers.

Metrics follow the NAT paper and SQuAD:

- ``exact``: the paper's GSM8K rule: the prediction string equals the gold string after ``####``
  with commas removed ("18.0" != "18").
- ``em``: SQuAD-normalised exact match (lower case, no punctuation / articles / extra spaces);
  the paper's HotpotQA reward. A gold ``True``/``False`` (StrategyQA) matches ``yes``/``no``.
- ``f1``: SQuAD token F1 >= ``f1_threshold``; the score drives the fine-grained buckets.

A source's ``success: true`` / ``success: false`` (``meta["source_success"]``, set by prepare)
marks its trajectories a success / a failure under every rule: what it says wins over the
record's fields, over ``all`` and over the computed ``exact`` / ``em`` / ``f1``.

The prediction is ``meta["pred"]`` when the source recorded one (a NAT record's or a natscale
episode's ``info.pred``), else the answer of the last ``finish`` the agent gave: a ``finish[...]``
action in its text or a ``finish`` tool call (its answer argument, named as the trajectory's
``finish`` schema names it, as ``natscale eval``'s tool-call loop reads it); the gold answer is the question file's ``answer`` (text after ``####``
when present), else ``meta["gt"]``.
"""

from __future__ import annotations

from dataclasses import replace

from natscale.agent.react import FINISH, finish_argument
from natscale.agent.scoring import (  # noqa: F401  (re-exported: the labelling rules' names)
    exact_match,
    extract_gold,
    f1_score,
    math_exact,
    normalize_answer,
)
from natscale.agent.tool_calls import finish_answer, finish_answer_key
from natscale.data.errors import DataError
from natscale.data.trajectory import Outcome, Trajectory, Turn

NO_OUTCOME_HINT = (
    "SFT data without outcomes (e.g. AgentInstruct, glaive, ETO): set outcome.success: all "
    "(every trajectory is a success) or the source's success: true (false for a file of "
    "failures); otherwise point the source's success_field at the success value, or compute it "
    "against gold answers with outcome.success: em/exact/f1"
)


def no_success_error(traj: Trajectory) -> DataError:
    """The error for a trajectory without a success value, naming the field its source reads it
    from (``meta["success_field"]``, which prepare sets from the source: ``info.reward`` for
    nat unless the source's ``success_field`` says otherwise)."""
    if "success_field" not in traj.meta:
        name, why = None, "its success field is missing or null"
    elif traj.meta["success_field"] is None:
        name, why = None, "the source has success_field: null and no 'reward = ...' observation"
    else:
        name, why = traj.meta["success_field"], "the field is missing or null"
    return DataError(
        f"trajectory {traj.id!r} has no success value ({why})",
        field=name,
        reason="no_outcome",
        hint=NO_OUTCOME_HINT,
    )


def extract_pred(traj: Trajectory) -> str | None:
    """The answer of the last ``finish`` in the assistant turns, if any: a ``finish`` tool call's
    answer argument, or the argument of a ``finish[...]`` action in the text."""
    answer_key = finish_answer_key(_finish_schema(traj))
    for turn in reversed(traj.turns):
        if turn.role == "assistant":
            pred = _finish_call_answer(turn, answer_key)
            if pred is None:
                pred = finish_argument(turn.content)
            if pred is not None:
                return pred
    return None


def _finish_schema(traj: Trajectory) -> dict | None:
    """The trajectory's ``finish`` tool schema (OpenAI form), if it offers one."""
    for schema in traj.tools or ():
        if schema.get("function", {}).get("name") == FINISH:
            return schema
    return None


def _finish_call_answer(turn: Turn, answer_key: str) -> str | None:
    """The answer of the turn's last ``finish`` tool call that gives one (see ``finish_answer``)."""
    for call in reversed(turn.tool_calls or ()):
        if call.get("name") == FINISH:
            answer = finish_answer(call.get("arguments"), answer_key)
            if answer is not None:
                return answer
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

    ``success``: ``field`` | ``all`` (every trajectory succeeds: SFT data without outcomes) |
    ``exact`` | ``em`` | ``f1``. ``score``: ``field`` (the source's
    score), ``f1`` (computed), ``auto`` (the source's score, else F1 when a gold answer exists),
    ``none``. A source's explicit ``success`` (``meta["source_success"]``) decides the class
    under every rule. Raises :class:`DataError` (reason ``no_outcome``/``no_gold``) when it cannot
    label.
    """
    out = traj.outcome
    pred, gold_answer = prediction(traj), gold(traj)
    source_success = traj.meta.get("source_success")
    computed = success in ("exact", "em", "f1") and source_success is None
    needs_gold = computed or score == "f1"
    if needs_gold and gold_answer is None:
        raise DataError(
            f"trajectory {traj.id!r} has no gold answer to compute {success!r} against",
            field="answer",
            reason="no_gold",
            hint="give a question file with answers, or use outcome.success: field",
        )
    if source_success is not None:
        ok = bool(source_success)
    elif success == "field":
        if out.success is None:
            raise no_success_error(traj)
        ok = out.success
    elif success == "all":
        ok = True
    elif success == "exact":
        ok = math_exact(pred, gold_answer)
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
