"""NAT strategies: which trajectories train, their class, and the question turn with its marker.

- ``vanilla``: successes only, plain question. ``nut``: successes and failures, plain question.
- ``nat``: successes and failures; the question carries the class marker as a suffix (default,
  as the paper) or a prefix. Default wording: the task prompt file's templates, else the paper's
  GSM8K sentences.
- ``nat-fine``: K buckets by score (default the paper's F1 = 1 / >= 0.4 / > 0 / = 0 with
  ``[Correct]`` ... ``[Totally Incorrect]`` as prefixes; a known failure scored into
  ``[Correct]`` goes to the next bucket).

Class 0 is always success / the top bucket; inference always renders class 0
(:func:`render_inference_prompt`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from natscale.config.prepare import PAPER_MARKERS, StrategyConfig
from natscale.data.errors import DataError
from natscale.data.outcome import no_success_error
from natscale.data.prompts import PLAIN_TEMPLATE, TaskPrompt
from natscale.data.render.messages import Message, prompt_messages
from natscale.data.trajectory import Trajectory


@dataclass
class Example:
    """A trajectory chosen for training: its class, loss weight and question turn text."""

    traj: Trajectory
    cls: int
    weight: float
    query: str


def each_turn(ex: Example) -> list[Example]:
    """``render.turns: each``: one example per trained turn of ``ex``, its trajectory cut after
    that turn with only it trained (the earlier turns are its history). An example without a
    trained turn is kept as it is."""
    turns = ex.traj.turns
    trained = [i for i, t in enumerate(turns) if t.train]
    if not trained:
        return [ex]
    return [
        replace(
            ex,
            traj=replace(
                ex.traj, turns=[replace(t, train=j == i) for j, t in enumerate(turns[: i + 1])]
            ),
        )
        for i in trained
    ]


def assign_class(traj: Trajectory, strategy: StrategyConfig) -> int | None:
    """Class index (0 = success / top bucket) or None when the strategy does not train on it."""
    if strategy.name == "nat-fine":
        score = traj.outcome.score
        if score is None:
            raise DataError(
                f"trajectory {traj.id!r} has no score for the nat-fine buckets",
                field="score",
                reason="no_score",
                hint="set the source's score_field, or outcome.score: f1 with gold answers",
            )
        field = traj.meta.get("score_field") or "score"
        if not math.isfinite(score):
            raise DataError(
                f"trajectory {traj.id!r} has score {score!r}, not a finite number",
                field=field,
                reason="bad_score",
                hint="fix or drop the record (it would land in an arbitrary bucket)",
            )
        if strategy.buckets is None and not 0.0 <= score <= 1.0:
            raise DataError(
                f"trajectory {traj.id!r} has score {score!r}, outside [0, 1] (the default "
                "nat-fine buckets are answer-F1 thresholds)",
                field=field,
                reason="bad_score",
                hint="fix the score, point score_field at an F1 in [0, 1], or define "
                "strategy.buckets for this score's range",
            )
        # the paper's [Correct] (the marker inference uses) never holds a known failure: an F1
        # of 1 for "1,080" against 1080, which the exact-match rule fails, goes one bucket down.
        # Custom buckets go by the score alone.
        failed = strategy.buckets is None and traj.outcome.success is False
        for k, b in enumerate(strategy.resolved_buckets()):
            if b.min is None or score > b.min or (b.inclusive and score == b.min):
                return max(k, 1) if failed else k
        raise AssertionError("the last bucket is a catch-all")
    if traj.outcome.success is None:
        raise no_success_error(traj)
    if traj.outcome.success:
        return 0
    return None if strategy.name == "vanilla" else 1


def question_template(cls: int, strategy: StrategyConfig, prompt: TaskPrompt | None = None) -> str:
    """The full question template (with ``{question}``) for class ``cls``."""
    prompt = prompt or TaskPrompt()
    plain = strategy.plain or prompt.plain or PLAIN_TEMPLATE
    if strategy.name in ("vanilla", "nut"):
        return plain
    if strategy.templates is not None:
        return strategy.templates[cls]
    names = strategy.class_names()
    if strategy.markers is None:
        # the task prompt file's own templates, when it has them for these classes
        if strategy.name == "nat" and all(n in prompt.templates for n in names):
            return prompt.templates[names[cls]]
        if strategy.name == "nat-fine":
            if all(n in prompt.templates for n in names):
                return prompt.templates[names[cls]]
            if len(prompt.bucket_templates) == len(names):
                return prompt.bucket_templates[cls]
    if strategy.markers is not None:
        marker = strategy.markers[cls]
    elif strategy.name == "nat":
        marker = PAPER_MARKERS[cls]
    else:
        marker = strategy.resolved_buckets()[cls].marker
    position = strategy.position or ("suffix" if strategy.name == "nat" else "prefix")
    fmt = strategy.suffix_format if position == "suffix" else strategy.prefix_format
    return fmt.replace("{plain}", plain).replace("{marker}", marker)


def format_question(question: str, template: str) -> str:
    """``template`` with ``question`` in place of ``{question}``. A question that already starts
    with ``Question:`` (FireAct's files) does not get a second one from a ``Question: {question}``
    template."""
    if QUESTION_SLOT in template and question.lstrip().startswith("Question:"):
        question = question.lstrip()[len("Question:") :].lstrip(" ")
    # replace, not str.format: questions and markers may contain braces
    return template.replace("{question}", question)


QUESTION_SLOT = "Question: {question}"


def select(
    trajs: list[Trajectory],
    strategy: StrategyConfig,
    *,
    seed: int = 42,
    prompts: dict[str, TaskPrompt] | None = None,
) -> tuple[list[Example], dict[str, dict[str, int]]]:
    """Label, sample and mark the trajectories; returns the examples and per-class counts.

    Sampling: ``strategy.counts[name]`` examples of a class, a seeded ``random.sample`` (or the
    first N in load order with ``sample: first``), kept in load order. Errors (no label) raise
    :class:`DataError`; the caller decides whether to skip.
    """
    names = strategy.class_names()
    by_class: list[list[Trajectory]] = [[] for _ in names]
    excluded = 0
    for traj in trajs:
        cls = assign_class(traj, strategy)
        if cls is None:
            excluded += 1
        else:
            by_class[cls].append(traj)
    rng = random.Random(seed)
    counts = strategy.counts or {}
    weights = strategy.weights or {}
    prompts = prompts or {}
    examples: list[Example] = []
    report: dict[str, dict[str, int]] = {}
    for cls, (name, members) in enumerate(zip(names, by_class, strict=True)):
        want = counts.get(name)
        keep = list(range(len(members)))
        if want is not None and want < len(members):
            keep = keep[:want] if strategy.sample == "first" else sorted(rng.sample(keep, want))
        report[name] = {"available": len(members), "requested": want, "kept": len(keep)}
        templates: dict[str, str] = {}
        for i in keep:
            traj = members[i]
            if traj.task not in templates:
                templates[traj.task] = question_template(cls, strategy, prompts.get(traj.task))
            query = format_question(traj.question, templates[traj.task])
            examples.append(Example(traj, cls, float(weights.get(name, 1.0)), query))
    report["excluded_by_strategy"] = {"count": excluded}
    return examples, report


def inference_messages(
    question: str,
    strategy: StrategyConfig,
    prompt: TaskPrompt | None = None,
    *,
    instruction_mode: str = "turn",
    acknowledgement: str | None = None,
    system: str = "",
) -> list[Message]:
    """The prompt messages for ``question`` with the success / top-bucket marker (class 0)."""
    prompt = prompt or TaskPrompt()
    query = format_question(question, question_template(0, strategy, prompt))
    return prompt_messages(
        system=system,
        instruction=prompt.instruction,
        acknowledgement=acknowledgement if acknowledgement is not None else prompt.acknowledgement,
        query=query,
        mode=instruction_mode,
    )


def render_inference_prompt(
    question: str,
    renderer,
    strategy: StrategyConfig,
    prompt: TaskPrompt | None = None,
    *,
    history: list[Message] | None = None,
    **kwargs,
) -> list[int]:
    """Token ids to generate the next assistant turn: the success-marked prompt for
    ``question``, then ``history`` (earlier assistant / observation turns), then the template's
    assistant header. ``renderer`` is a :class:`natscale.data.render.Renderer`; ``kwargs`` go to
    :func:`inference_messages`. Training and evaluation share this layout exactly."""
    messages = inference_messages(question, strategy, prompt, **kwargs) + list(history or [])
    return renderer.generation_prompt(messages)
