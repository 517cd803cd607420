"""Seeded generator of the bundled example data: a synthetic math ReAct task in the NAT format.

Arithmetic word problems (shopping, rates, sharing, percentages, multi-step) with GSM8K-style gold
answers, solved by a simulated agent with ``calculate[...]`` and ``finish[...]`` against the real
calculator. Output is the NAT release format (``examples/README.md`` documents it)::

    trajectories.json   [{"id", "source", "info": {"reward", "pred", "gt", "finished", "kind"},
                          "conversations": [{"role", "content", "loss"}, ...]}, ...]
    questions.jsonl     {"id", "question", "answer"} per line; answer ends with "#### <number>"
    questions_test.jsonl  held-out questions for `natscale eval`: drawn with their own seed and
                        none of them is a training question (no trajectory uses them)
    prompt.json         {"task", "instruction", "acknowledgement", "templates": {...}}

Only ``random.Random(seed)`` is used and JSON is written with a fixed key order, a fixed layout
(one trajectory per line of the list, one question per line) and ``ensure_ascii=False``, so the same
seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from natscale.agent.calculator import calculate
from natscale.agent.loop import Question, play_script
from natscale.agent.scoring import extract_gsm8k_answer, math_reward
from natscale.agent.scripted.problems import Problem, Ref, draw_problem
from natscale.agent.scripted.teacher import KINDS, MAX_TURNS, ScenarioUnavailable, simulate
from natscale.agent.tools import build_tools
from natscale.atomic import atomic_write_bytes

DEFAULT_SEED = 20240218  # the paper's v1 release date
DEFAULT_NUM_QUESTIONS = 1300
DEFAULT_NUM_TEST = 200
TEST_SEED_OFFSET = 1_000_003  # the test split's seed is seed + this
TEMPERATURES = (0.2, 0.5, 0.7)  # the release's `source` values: sampling temperatures

INSTRUCTION = (
    "Solve a math problem with interleaving Thought, Action, Observation steps. Thought can reason "
    "about the current situation, and Action can be two types:\n(1) calculate[expression], which "
    "calculates the expression and returns the answer.\n(2) finish[answer], which returns the "
    "answer and finishes the task."
)
ACKNOWLEDGEMENT = "I've understood your instruction, start please."
TEMPLATES = {
    "plain": "Question: {question}",
    "success": "Question: {question}. Generate a sequence of Thought and Action steps to solve the problem correctly.",
    "failure": "Question: {question}. Generate a sequence of Thought and Action steps. But incorrectly solve the problem.",
}
FAILURE_STYLES = ("varied", "systematic")
FILES = ("trajectories.json", "questions.jsonl", "prompt.json", "questions_test.jsonl")

# Outcome mix: success falls with temperature and plan length; failures split by these weights.
_SUCCESS_AT = {0.2: 0.52, 0.5: 0.42, 0.7: 0.32}
_FAILURE_WEIGHTS = {"wrong_answer": 0.45, "bad_tool_args": 0.35, "unfinished": 0.20}
_TOOLS = build_tools(["calculate"])
_NICE_VALUE = re.compile(r"\d+(\.\d\d?)?")


@dataclass(frozen=True)
class SyntheticSet:
    questions: list[dict]
    trajectories: list[dict]
    prompt: dict
    test_questions: list[dict] = field(default_factory=list)


def prompt_record() -> dict:
    return {
        "task": "math",
        "instruction": INSTRUCTION,
        "acknowledgement": ACKNOWLEDGEMENT,
        "templates": dict(TEMPLATES),
    }


def generate(
    seed: int = DEFAULT_SEED,
    num_questions: int = DEFAULT_NUM_QUESTIONS,
    num_test: int = DEFAULT_NUM_TEST,
    *,
    verbosity: int | None = None,
    max_steps: int | None = None,
    failures: str = "varied",
) -> SyntheticSet:
    """Generate questions and 1-3 trajectories per question (about 2.3 on average), and a
    held-out test split (:func:`test_questions`).

    ``verbosity`` fixes how much the teacher writes in its thoughts (0 = terse, 1, 2 = restates
    the question and plans); None draws it per trajectory, as the bundled data was made.
    ``max_steps`` keeps only problems whose gold plan has at most that many calculator steps (the
    task's difficulty; None = every family, as the bundled data). ``failures`` is ``"varied"``
    (random slips of several modes per kind, as the bundled data) or ``"systematic"`` (one mode
    per kind, the same on every problem: ``natscale.agent.scripted.teacher`` lists them)."""
    if failures not in FAILURE_STYLES:
        raise ValueError(f"failures must be one of {', '.join(FAILURE_STYLES)}, not {failures!r}")
    rng = random.Random(seed)
    questions, trajectories = [], []
    for q_index in range(num_questions):
        problem = _nice_problem(rng, max_steps)
        qid = f"math-{q_index:05d}"
        answer = _gold_answer_text(problem, rng)
        questions.append({"id": qid, "question": problem.question, "answer": answer})
        num_samples = rng.choices((1, 2, 3), weights=(2, 3, 5))[0]
        for temperature in sorted(rng.sample(TEMPERATURES, num_samples)):
            trajectories.append(
                _trajectory(qid, problem, answer, temperature, rng, verbosity, failures)
            )
    exclude = {q["question"] for q in questions}
    test = test_questions(seed + TEST_SEED_OFFSET, num_test, exclude, max_steps=max_steps)
    return SyntheticSet(questions, trajectories, prompt_record(), test)


def test_questions(
    seed: int, num: int, exclude: set[str], *, max_steps: int | None = None
) -> list[dict]:
    """``num`` held-out questions drawn with their own seed, none of them in ``exclude``."""
    rng = random.Random(seed)
    out: list[dict] = []
    seen = set(exclude)
    while len(out) < num:
        problem = _nice_problem(rng, max_steps)
        if problem.question in seen:
            continue
        seen.add(problem.question)
        answer = _gold_answer_text(problem, rng)
        out.append(
            {"id": f"math-test-{len(out):05d}", "question": problem.question, "answer": answer}
        )
    return out


def _nice_problem(rng: random.Random, max_steps: int | None = None) -> Problem:
    """Draw problems until the gold plan only has positive, plain values and an integer answer
    (and at most ``max_steps`` steps)."""
    for _ in range(1000):
        problem = draw_problem(rng)
        if max_steps is not None and len(problem.steps) > max_steps:
            continue
        values = _gold_values(problem)
        if all(_NICE_VALUE.fullmatch(v) and v.strip("0.") for v in values) and values[-1].isdigit():
            return problem
    raise RuntimeError("could not draw a problem with nice numbers in 1000 tries")


def _gold_values(problem: Problem) -> list[str]:
    values: dict[int, str] = {}
    for i, step in enumerate(problem.steps):
        args = [values[a.index] if isinstance(a, Ref) else a for a in step.args]
        values[i] = calculate(step.template.format(*args))
    return [values[i] for i in range(len(problem.steps))]


def _gold_answer_text(problem: Problem, rng: random.Random) -> str:
    """GSM8K style: one sentence per step with a ``<<expr=value>>`` annotation, then ``#### N``."""
    values: dict[int, str] = {}
    lines = []
    for i, step in enumerate(problem.steps):
        args = [values[a.index] if isinstance(a, Ref) else a for a in step.args]
        expr = step.template.format(*args).replace(" ", "")
        values[i] = calculate(expr)
        lines.append(step.sentence.format(calc=f"{expr}=<<{expr}={values[i]}>>{values[i]}"))
    final = values[len(problem.steps) - 1]
    shown = f"{int(final):,}" if int(final) >= 1000 and rng.random() < 0.3 else final
    return "\n".join(lines) + f"\n#### {shown}"


def _trajectory(
    qid: str,
    problem: Problem,
    answer: str,
    temperature: float,
    rng: random.Random,
    verbosity: int | None = None,
    failures: str = "varied",
) -> dict:
    p_success = max(0.15, _SUCCESS_AT[temperature] - 0.03 * (len(problem.steps) - 2))
    drawn = rng.choices((0, 1, 2), weights=(3, 5, 3))[0]
    verbosity = drawn if verbosity is None else verbosity
    kind = "success" if rng.random() < p_success else _weighted(rng, _FAILURE_WEIGHTS)
    systematic = failures == "systematic"
    # a systematic failure may not exist for a problem ("80 out of 80" has no wrong operation that
    # changes the answer): then the next failure kind that does
    kinds = [kind] + [k for k in _FAILURE_WEIGHTS if systematic and kind != "success" and k != kind]
    agent = None
    for kind in kinds:
        for _ in range(50):
            try:
                agent = simulate(problem, kind, rng, verbosity, systematic=systematic)
                break
            except ScenarioUnavailable:
                continue
        if agent is not None:
            break
    else:
        raise RuntimeError(f"{qid}: no {kinds[0]!r} episode in 50 tries")
    # The teacher is a scripted backend: its assistant turns run through the rollout loop, whose
    # real tools write the observations, so bundled data and model rollouts share one format.
    script = [m["content"] for m in agent.messages if m["role"] == "assistant"]
    episode = play_script(Question(qid, problem.question), script, _TOOLS, max_turns=MAX_TURNS)
    assert episode.conversations() == agent.messages and episode.pred == agent.pred, qid
    assert (episode.failure == "turn_limit") == (kind == "unfinished"), (qid, episode.failure)
    finished = episode.pred is not None
    reward = math_reward(episode.pred, answer)
    # The scenario decides the kind; the paper's rule decides the label. They must agree.
    assert reward == (kind == "success"), (qid, kind, agent.pred, answer)
    assert finished == (kind != "unfinished"), (qid, kind)
    return {
        "id": qid,
        "source": temperature,
        "info": {
            "reward": reward,
            "pred": episode.pred,
            "gt": extract_gsm8k_answer(answer),
            "finished": finished,
            "kind": kind,
        },
        "conversations": episode.conversations(),
    }


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


# -- serialisation -------------------------------------------------------------------------
def dumps_trajectories(trajectories: list[dict]) -> str:
    """A JSON list with one trajectory per line: compact, valid JSON, and diffs line by line."""
    lines = ",\n".join(json.dumps(t, ensure_ascii=False) for t in trajectories)
    return f"[\n{lines}\n]\n"


def dumps_questions(questions: Iterable[dict]) -> str:
    return "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions)


def dumps_prompt(prompt: dict) -> str:
    return json.dumps(prompt, ensure_ascii=False, indent=2) + "\n"


def render_files(data: SyntheticSet) -> dict[str, bytes]:
    """File name -> exact bytes of the three data files."""
    return {
        "trajectories.json": dumps_trajectories(data.trajectories).encode("utf-8"),
        "questions.jsonl": dumps_questions(data.questions).encode("utf-8"),
        "prompt.json": dumps_prompt(data.prompt).encode("utf-8"),
        "questions_test.jsonl": dumps_questions(data.test_questions).encode("utf-8"),
    }


def write_dataset(data: SyntheticSet, out_dir: str | os.PathLike) -> list[Path]:
    """Write the three files into ``out_dir`` atomically (temp file + rename); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, payload in render_files(data).items():
        paths.append(atomic_write_bytes(out / name, payload))
    return paths


def kind_counts(trajectories: list[dict]) -> dict[str, int]:
    return {k: sum(t["info"]["kind"] == k for t in trajectories) for k in KINDS}
