"""A simulated ReAct agent that solves (or fails) a synthetic word problem.

Every observation comes from the real calculator (:func:`natscale.agent.calculator.calculate`) on the
argument the agent wrote, and later steps use the values the agent *observed*, so a wrong number
propagates. Episodes follow the paper's loop: at most :data:`MAX_TURNS` assistant turns (its
``max_depth=6`` with depth starting at 0), ``finish[...]`` ends the episode with the observation
``Episode finished``. Scenarios per outcome kind:

* ``success``: the plan step by step, or in one combined expression, optionally with a malformed
  expression that is corrected after the ``Error:`` observation, or a final double-check; one-step
  problems are sometimes answered directly.
* ``wrong_answer``: correct tool calls but a wrong final answer: a formatting slip (``18.0``,
  ``$18``, ``1,200``), an arithmetic slip when copying the result, finishing early with an
  intermediate result, or a wrong operation in one step (a reasoning error).
* ``bad_tool_args``: a wrong number typed into an expression (propagates to the answer), or a
  malformed expression (``4 x 3``, ``$12 + 3``, ``1,200 * 3``) after which the agent guesses.
* ``unfinished``: stuck re-trying malformed expressions, or double-checking forever, until the
  turn limit.

With ``systematic=True`` each failure kind has one mode, the same on every problem, so that a model
can learn it as a behaviour of its own (the varied slips above are mostly noise around the correct
solution, whose most likely continuation is still the correct one):

* ``wrong_answer``: always the wrong operation in one step (``{0} * {1}`` for ``{0} / {1}``).
* ``bad_tool_args``: always the expression with an equals sign appended, then a guess: the first
  number of that expression (that is not the answer).
* ``unfinished``: as above (both of its modes never finish).
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

from natscale.agent.calculator import calculate
from natscale.agent.react import (
    CALCULATE,
    FINISH,
    FINISH_OBSERVATION,
    format_observation,
    format_step,
)
from natscale.agent.scripted.problems import Problem, Ref

MAX_TURNS = 7
KINDS = ("success", "wrong_answer", "bad_tool_args", "unfinished")
_PLAIN_NUMBER = re.compile(r"\d+(\.\d+)?")


class ScenarioUnavailable(Exception):
    """The requested scenario does not fit this problem (e.g. no intermediate result to stop at)."""


def fill(template: str, args: tuple, values: dict[int, str], literal=None) -> str:
    """Fill a step template with literals and the observed values of earlier steps."""
    parts = []
    for k, arg in enumerate(args):
        if isinstance(arg, Ref):
            parts.append(_operand(values[arg.index]))
        else:
            parts.append(literal[1] if literal is not None and literal[0] == k else arg)
    return template.format(*parts)


def _operand(value: str) -> str:
    """Parenthesise anything that is not a plain non-negative number (``7/2``, ``-3``, ``1e-07``)."""
    return value if _PLAIN_NUMBER.fullmatch(value) else f"({value})"


class Agent:
    """Writes one episode: assistant turns (thought + action) and observation turns."""

    def __init__(
        self, problem: Problem, rng: random.Random, verbosity: int, systematic: bool = False
    ) -> None:
        self.p, self.rng, self.verbosity = problem, rng, verbosity
        self.systematic = systematic  # one mode per failure kind (see the module docstring)
        self.messages: list[dict] = []
        self.values: dict[int, str] = {}
        self.pred: str | None = None
        self.bad_call = False  # a malformed expression or a wrong number was sent to the tool

    # -- turn primitives ---------------------------------------------------------------------
    @property
    def turns_left(self) -> int:
        return MAX_TURNS - sum(m["role"] == "assistant" for m in self.messages)

    def _add(self, assistant: str, observation: str) -> None:
        assert self.turns_left > 0, "episode is already at the turn limit"
        self.messages.append({"role": "assistant", "content": assistant, "loss": True})
        self.messages.append(
            {"role": "user", "content": format_observation(observation), "loss": False}
        )

    def calc(self, thought: str | None, expression: str) -> str:
        observation = calculate(expression)
        self._add(format_step(thought, CALCULATE, expression), observation)
        return observation

    def finish(self, thought: str | None, answer: str) -> None:
        self._add(format_step(thought, FINISH, answer), FINISH_OBSERVATION)
        self.pred = answer

    # -- plan execution ----------------------------------------------------------------------
    def expression(self, i: int, *, literal=None, wrong: bool = False) -> str:
        step = self.p.steps[i]
        template = step.wrong if wrong else step.template
        return fill(template, step.args, self.values, literal)

    def combined(self, i: int) -> str:
        """Step ``i`` with every earlier result it uses inlined as a parenthesised expression."""
        step = self.p.steps[i]
        parts = [f"({self.combined(a.index)})" if isinstance(a, Ref) else a for a in step.args]
        return step.template.format(*parts)

    def run_step(self, i: int, *, literal=None, wrong: bool = False, thought=None) -> str:
        expr = self.expression(i, literal=literal, wrong=wrong)
        obs = self.calc(self.step_thought(i) if thought is None else thought, expr)
        self.values[i] = obs
        return obs

    # -- thoughts ----------------------------------------------------------------------------
    def step_thought(self, i: int) -> str | None:
        step, rng = self.p.steps[i], self.rng
        first, last = i == 0, i == len(self.p.steps) - 1
        conn = (
            rng.choice(("First,", "To start,")) if first else rng.choice(("Next,", "Then", "Now"))
        )
        if last and not first:
            conn = rng.choice(("Finally,", "Now", "Last,"))
        why = _fill_refs(step.why, self.values)
        if self.verbosity == 0:
            return rng.choice((f"I need {step.goal}.", f"Compute {step.goal}.", f"{why}."))
        if self.verbosity == 1:
            return rng.choice(
                (
                    f"{why}. {conn} I need to calculate {step.goal}.",
                    f"{conn} I will calculate {step.goal}. {why}.",
                    f"{why}, so I can calculate {step.goal}.",
                )
            )
        text = f"{why}. {conn} I need to calculate {step.goal}, and I will use the calculator."
        if first:
            outline = _outline([s.goal for s in self.p.steps])
            text = f"The question asks for {self.p.ask}. I will find {outline}. " + text
        elif i - 1 in self.values:
            text = f"The previous step gave {self.values[i - 1]}. " + text
        return text

    def final_thought(self, answer: str, *, checked: bool = False) -> str | None:
        conclusion = self.p.conclusion.format(answer=answer)
        if self.verbosity == 0:  # sometimes no thought at all: the paper's parser accepts that
            options = (f"The answer is {answer}.", conclusion, None)
            return self.rng.choices(options, weights=(5, 5, 1))[0]
        tail = self.rng.choice(
            (
                " I can finish the task now.",
                f" Now that I have {self.p.ask}, I can finish the task.",
                f" So the answer is {answer}.",
            )
        )
        check = " The check gives the same result." if checked else ""
        return f"{conclusion}{check}{tail}" if self.verbosity == 2 else f"{conclusion}{tail}"

    def combined_thought(self) -> str | None:
        goals = " and ".join(s.goal for s in self.p.steps[:2])
        if self.verbosity == 0:
            return f"Compute {self.p.ask} in one expression."
        return (
            f"The question asks for {self.p.ask}. I need {goals}, which I can combine into one "
            "expression for the calculator."
        )

    def retry_thought(self, hint: str) -> str:
        lead = self.rng.choice(
            (
                "The calculator could not read that expression.",
                "There was an error in the expression.",
                "Oops, that expression was not valid.",
            )
        )
        return f"{lead} {hint} Let me try again."


def _outline(goals: list[str]) -> str:
    if len(goals) <= 2:
        return " and then ".join(goals)
    return ", then ".join(goals[:-1]) + f", and finally {goals[-1]}"


def _fill_refs(text: str, values: dict[int, str]) -> str:
    return text.format(**{f"r{k}": v for k, v in values.items()}) if "{r" in text else text


def as_number(text: str) -> Fraction | None:
    """The value of a plain calculator output (``12``, ``-3``, ``7/2``, ``2.5``), else None."""
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def malformed(expression: str, rng: random.Random, problem: Problem) -> tuple[str, str]:
    """A plausible malformed version of ``expression`` and the hint a careful agent would give."""
    options: list[tuple[str, str]] = []
    if " * " in expression:
        options.append((expression.replace(" * ", " x ", 1), "I should use * for multiplication."))
        options.append((expression.replace(" * ", " × ", 1), "I should use * for multiplication."))
    if problem.currency:
        options.append((problem.currency + expression, "I should leave out the currency sign."))
    big = re.search(r"\b(\d)(\d{3})\b", expression)
    if big:
        with_comma = expression[: big.start()] + f"{big[1]},{big[2]}" + expression[big.end() :]
        options.append((with_comma, "I should write the number without a comma."))
    percent = re.search(r" \* (\d+) / 100", expression)
    if percent:
        options.append(
            (
                expression.replace(percent[0], f" * {percent[1]}%"),
                "I should divide by 100 instead of using %.",
            )
        )
    options.append((expression + " =", "I should not include the equals sign."))
    options.append((f"({expression}", "I missed a closing parenthesis."))
    if problem.unit and " " not in problem.unit:
        options.append(
            (f"{expression} {problem.unit}", "I should only write numbers and operators.")
        )
    return rng.choice(options)


# -- scenarios ---------------------------------------------------------------------------------
def simulate(
    problem: Problem, kind: str, rng: random.Random, verbosity: int, *, systematic: bool = False
) -> Agent:
    """Run one episode of outcome ``kind``; raises :class:`ScenarioUnavailable` if it cannot.
    ``systematic``: failures of one mode per kind (the module docstring lists them)."""
    agent = Agent(problem, rng, verbosity, systematic)
    _SCENARIOS[kind](agent)
    return agent


def _pick(rng: random.Random, weighted: dict) -> object:
    keys = list(weighted)
    return rng.choices(keys, weights=[weighted[k] for k in keys])[0]


def _success(a: Agent) -> None:
    n, rng = len(a.p.steps), a.rng
    mode = _pick(rng, {"plain": 6, "combined": 1.5 if n > 1 else 0, "direct": 3 if n == 1 else 0,
                       "retry": 1.5, "verify": 1.5 if n < MAX_TURNS - 2 else 0})  # fmt: skip
    gold = _gold(a.p)
    if mode == "direct":
        a.finish(a.final_thought(gold), gold)
        return
    if mode == "combined":
        obs = a.calc(a.combined_thought(), a.combined(n - 1))
        a.finish(a.final_thought(obs), obs)
        return
    retry_at = rng.randrange(n) if mode == "retry" else -1
    for i in range(n):
        if i == retry_at:
            bad, hint = malformed(a.expression(i), rng, a.p)
            a.calc(a.step_thought(i), bad)
            a.run_step(i, thought=a.retry_thought(hint))
        else:
            a.run_step(i)
    checked = mode == "verify"
    if checked:
        a.calc(a.rng.choice(_VERIFY_THOUGHTS), a.combined(n - 1))
    a.finish(a.final_thought(a.values[n - 1], checked=checked), a.values[n - 1])


_VERIFY_THOUGHTS = (
    "Let me double-check the result by computing everything in one expression.",
    "To be safe, I will verify the whole calculation in a single expression.",
    "Before answering, I want to check the result once more.",
)


def _wrong_answer(a: Agent) -> None:
    n, rng = len(a.p.steps), a.rng
    wrong_ops = [i for i, s in enumerate(a.p.steps) if s.wrong]
    if a.systematic and not wrong_ops:
        raise ScenarioUnavailable("no step of this problem has a wrong operation")
    mode = (
        "wrong_op"
        if a.systematic
        else _pick(
            rng,
            {"format": 3, "slip": 2, "early": 2 if n > 1 else 0, "wrong_op": 3 if wrong_ops else 0},
        )
    )
    gold = _gold(a.p)
    if mode == "wrong_op":
        bad = rng.choice(wrong_ops)
        for i in range(n):
            obs = a.run_step(i, wrong=i == bad)
            if as_number(obs) is None:
                raise ScenarioUnavailable("a wrong operation made the calculator fail")
        answer = a.values[n - 1]
    elif mode == "early":
        stop = rng.randrange(1, n)
        for i in range(stop):
            a.run_step(i)
        answer = a.values[stop - 1]
    else:
        for i in range(n):
            a.run_step(i)
        answer = (
            _formatting_slip(gold, a.p, rng) if mode == "format" else _arithmetic_slip(gold, rng)
        )
    if answer == gold:
        raise ScenarioUnavailable("the mistake did not change the answer")
    a.finish(a.final_thought(answer), answer)


def _bad_tool_args(a: Agent) -> None:
    n, rng = len(a.p.steps), a.rng
    literal_slots = [
        (i, k)
        for i, s in enumerate(a.p.steps)
        for k, arg in enumerate(s.args)
        if isinstance(arg, str)
    ]
    gold = _gold(a.p)
    if a.systematic:  # always the equals sign, then the expression's first number as the answer
        bad_at = rng.randrange(n)
        for i in range(bad_at):
            a.run_step(i)
        expression = a.expression(bad_at)
        a.calc(a.step_thought(bad_at), expression + " =")
        numbers = [m[0] for m in _PLAIN_NUMBER.finditer(expression) if m[0] != gold]
        if not numbers:
            raise ScenarioUnavailable("every number of the expression is the answer")
        answer = numbers[0]
        thought = _GIVE_UP[0] + " " + (a.final_thought(answer) or "")
    elif rng.random() < 0.55:  # wrong number typed into one expression
        i_bad, k_bad = rng.choice(literal_slots)
        typo = _number_typo(a.p.steps[i_bad].args[k_bad], a.p, rng)
        for i in range(n):
            obs = a.run_step(i, literal=(k_bad, typo) if i == i_bad else None)
            if as_number(obs) is None:
                raise ScenarioUnavailable("the typo made the calculator fail")
        answer = a.values[n - 1]
        thought = a.final_thought(answer) or ""
    else:  # malformed expression(s), then a guess
        bad_at = rng.randrange(n)
        for i in range(bad_at):
            a.run_step(i)
        for attempt in range(rng.choice((1, 1, 2))):
            bad, _ = malformed(a.expression(bad_at), rng, a.p)
            a.calc(a.step_thought(bad_at) if attempt == 0 else "Let me try again.", bad)
        answer = _arithmetic_slip(gold, rng)
        thought = rng.choice(_GIVE_UP) + " " + (a.final_thought(answer) or "")
    a.bad_call = True
    if answer == gold:
        raise ScenarioUnavailable("the wrong number did not change the answer")
    a.finish(thought.strip(), answer)


_GIVE_UP = (
    "The calculator is not working for this, so I will work it out myself.",
    "The calculator gives an error, so I will estimate the answer instead.",
    "I could not get the calculator to work.",
)


def _unfinished(a: Agent) -> None:
    n, rng = len(a.p.steps), a.rng
    if rng.random() < 0.5:  # stuck on a malformed expression
        stuck = rng.randrange(n)
        for i in range(stuck):
            a.run_step(i)
        a.calc(a.step_thought(stuck), malformed(a.expression(stuck), rng, a.p)[0])
        while a.turns_left:
            a.calc(rng.choice(_STUCK_THOUGHTS), malformed(a.expression(stuck), rng, a.p)[0])
        a.bad_call = True
        return
    for i in range(n):  # solves it, then keeps double-checking instead of finishing
        if a.turns_left:
            a.run_step(i)
    while a.turns_left:
        i = rng.randrange(n)
        if rng.random() < 0.4:
            a.calc(rng.choice(_VERIFY_THOUGHTS), a.combined(n - 1))
        else:
            a.calc(rng.choice(_RECHECK_THOUGHTS).format(goal=a.p.steps[i].goal), a.expression(i))


_STUCK_THOUGHTS = (
    "Let me try again.",
    "The calculator still shows an error. I will try writing it differently.",
    "Maybe the calculator needs the expression in another form.",
    "I will try the same calculation again.",
)
_RECHECK_THOUGHTS = (
    "Let me verify {goal} once more.",
    "I want to be sure about {goal}, so I will recompute it.",
    "The results agree so far, but I will double-check {goal}.",
)

_SCENARIOS = {
    "success": _success,
    "wrong_answer": _wrong_answer,
    "bad_tool_args": _bad_tool_args,
    "unfinished": _unfinished,
}


def _gold(problem: Problem) -> str:
    values: dict[int, str] = {}
    for i, step in enumerate(problem.steps):
        values[i] = calculate(fill(step.template, step.args, values))
    return values[len(problem.steps) - 1]


def _formatting_slip(gold: str, problem: Problem, rng: random.Random) -> str:
    options = [f"{gold}.0", f"{gold}.00"]
    if problem.currency:
        options.append(problem.currency + gold)
    if problem.unit:
        options.append(f"{gold} {problem.unit}")
    if abs(int(gold)) >= 1000:
        options += [f"{int(gold):,}"] * 3
    return rng.choice(options)


def _arithmetic_slip(gold: str, rng: random.Random) -> str:
    value = int(gold)
    options = [value + 1, value - 1, value + 10, value * 10]
    digits = str(abs(value))
    if len(digits) >= 2:
        options.append(int(digits[:-1]))
        for k in range(len(digits) - 1):
            if digits[k] != digits[k + 1]:
                swapped = digits[:k] + digits[k + 1] + digits[k] + digits[k + 2 :]
                options.append(int(swapped))
    return str(rng.choice([v for v in options if v > 0 and v != value] or [value + 1]))


def _number_typo(number: str, problem: Problem, rng: random.Random) -> str:
    """A misread number: another number from the question, a digit slip, or a shifted decimal."""
    others = sorted(
        {a for s in problem.steps for a in s.args if isinstance(a, str) and a != number}
    )
    options = list(others)
    if number.isdigit():
        value = int(number)
        options += [str(value + 1), str(value * 10)]
        if value > 2:
            options.append(str(value - 1))
        if len(number) >= 2 and number[0] != number[1]:
            options.append(number[1] + number[0] + number[2:])
    else:
        options.append(number.replace(".", "", 1).lstrip("0") or "1")
    return rng.choice([o for o in options if o != number and o not in ("0", "")])
