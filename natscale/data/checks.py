"""Warnings where the data and the strategy disagree (counted in ``stats.json``, printed once).

Each check returns nothing or counts one kind of disagreement; none stops the run:

- ``nat_fine_buckets_collapsed``: ``nat-fine`` scores fill fewer buckets than defined (e.g.
  yes/no answers give F1 0 or 1: 2 of the paper's 4 buckets), so the extra markers never train.
- ``nat_math_markers``: ``nat`` on a task whose prompt gives no success / failure templates
  falls back to the paper's GSM8K sentences ("... solve the problem correctly."), math wording.
- ``back_to_back_assistant``: trajectories with two assistant turns in a row (a missing
  observation, or a reply split in two); each is rendered as its own trained turn.
- ``assistant_starts_with_observation``: an assistant turn that begins with ``Observation:``
  (an observation the source labelled as model text): it would be trained.
- ``tool_call_text_dropped``: assistant turns with text beside their tool calls, through a chat
  template that renders a call alone (Llama 3's): the text is not trained (nor seen at inference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

from natscale.config.prepare import StrategyConfig
from natscale.data.prompts import TaskPrompt

MATH_TASKS = ("math", "gsm8k")


def data_warnings(
    examples: Sequence,
    sampling: dict[str, dict[str, Any]],
    strategy: StrategyConfig,
    prompts: dict[str, TaskPrompt],
    *,
    drops_tool_call_text: bool = False,
    unreadable_calls: Callable[[], str | None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """``{kind: {"count": n, "message": text}}`` for every kind that occurs (see the module)."""
    out: dict[str, dict[str, Any]] = {}

    def add(kind: str, count: int, message: str) -> None:
        if count:
            out[kind] = {"count": count, "message": message}

    names = strategy.class_names()
    if strategy.name == "nat-fine":
        filled = [n for n in names if sampling.get(n, {}).get("available", 0)]
        if filled and len(filled) < len(names):
            empty = [n for n in names if n not in filled]
            add(
                "nat_fine_buckets_collapsed",
                len(empty),
                f"nat-fine: the scores fill {len(filled)} of {len(names)} buckets (empty: "
                f"{', '.join(empty)}); with yes/no or exact-match scores use nat, or define "
                "strategy.buckets for this score",
            )
    if strategy.name == "nat" and strategy.markers is None and strategy.templates is None:
        tasks = {ex.traj.task for ex in examples}
        fallback = sorted(
            t
            for t in tasks
            if not all(n in prompts.get(t, TaskPrompt()).templates for n in names)
            and t.lower() not in MATH_TASKS
        )
        add(
            "nat_math_markers",
            sum(ex.traj.task in fallback for ex in examples),
            f"nat: task(s) {fallback} have no success/failure templates, so their questions "
            "carry the paper's GSM8K (math) marker sentences; set strategy.markers or "
            "strategy.templates, or give a prompt file with templates (or the paper's "
            "zero-shot-target-aware variant) for these tasks",
        )
    back_to_back = starts_obs = call_text = with_calls = 0
    for ex in examples:
        with_calls += any(t.tool_calls for t in ex.traj.turns)
        roles = [t.role for t in ex.traj.turns]
        back_to_back += any(a == b == "assistant" for a, b in pairwise(roles))
        starts_obs += any(
            t.role == "assistant" and t.content.lstrip().startswith("Observation:")
            for t in ex.traj.turns
        )
        if drops_tool_call_text:
            call_text += sum(
                bool(t.role == "assistant" and t.tool_calls and t.content) for t in ex.traj.turns
            )
    add(
        "back_to_back_assistant",
        back_to_back,
        "trajectories with two assistant turns in a row (each is rendered and trained as its "
        "own turn); check the source's roles mapping",
    )
    add(
        "assistant_starts_with_observation",
        starts_obs,
        "trajectories with an assistant turn that begins with 'Observation:' (trained as model "
        "text); map the source's observation role (sharegpt roles: {...: observation})",
    )
    add(
        "tool_call_text_dropped",
        call_text,
        "assistant turns with text beside their tool calls: the chat template renders a call "
        "alone (as Llama 3's does), so that text is neither trained nor shown at inference; "
        "give render.chat_template a template that renders it to keep it",
    )
    why = unreadable_calls() if with_calls else None  # checked once calls are met
    if why:
        add(
            "tool_calls_unreadable",
            with_calls,
            "examples with tool calls written by a chat template whose calls no response "
            f"template of natscale eval reads back ({why}): a model trained on them may write "
            "calls nothing can parse; check the template (render.chat_template), or write a "
            "response template for it (natscale eval's prompt.response_template)",
        )
    return out
