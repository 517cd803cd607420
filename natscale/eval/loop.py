"""The paper's ReAct rollout loop, batched across episodes.

Each step asks the backend for the next assistant turn of every active episode, parses its
``Action: tool[argument]``, calls the tool and appends ``Observation: ...``. An episode ends on
``finish[answer]`` (observation ``Episode finished``) or on a failure, counted by kind:

- ``unparseable_action``: the turn has no ``Action: tool[argument]``;
- ``unknown_tool``: the action names a tool that is not in the registry;
- ``turn_limit``: ``max_depth + 1`` turns without ``finish`` (the paper's depth 6 = 7 turns);
- ``context_overflow``: the prompt no longer fits the model's context.

Tool errors (a bad expression, a timeout) are observations ``Error: ...`` and the episode goes
on, as in the paper. Finished episodes are handed to ``on_done`` at once; when ``should_stop()``
turns true the loop returns after the current step and drops the unfinished episodes (a resumed
run redoes them).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from natscale.agent.react import (
    FINISH,
    FINISH_OBSERVATION,
    ReActParseError,
    format_observation,
    parse_step,
)
from natscale.agent.tools import Tool, call_tool
from natscale.data.render.messages import Message
from natscale.eval.backends import Generation, Request
from natscale.eval.questions import Question

FAILURES = ("unparseable_action", "unknown_tool", "turn_limit", "context_overflow")


@dataclass
class Episode:
    question: Question
    sample: int
    history: list[Message] = field(default_factory=list)
    turns: int = 0
    generated_tokens: int = 0
    pred: str | None = None
    failure: str | None = None
    done: bool = False

    def conversations(self) -> list[dict]:
        """The NAT release ``conversations``: assistant turns trained, observations not."""
        return [
            {
                "role": "assistant" if m.role == "assistant" else "user",
                "content": m.content,
                "loss": m.role == "assistant",
            }
            for m in self.history
        ]


def turn_seed(seed: int, qid: str, sample: int, turn: int) -> int:
    return zlib.crc32(f"{seed}:{qid}:{sample}:{turn}".encode()) & 0x7FFFFFFF


def advance(
    ep: Episode, gen: Generation, tools: dict[str, Tool], *, max_turns: int, timeout_s: float
) -> None:
    """Apply one generated assistant turn to ``ep`` (see the module docstring)."""
    if gen.overflow:
        ep.failure, ep.done = "context_overflow", True
        return
    ep.turns += 1
    ep.generated_tokens += gen.tokens
    ep.history.append(Message("assistant", gen.text, True))

    def observe(text: str) -> None:
        ep.history.append(Message("observation", format_observation(text)))

    try:
        step = parse_step(gen.text)
    except ReActParseError as exc:
        observe(f"Error: {exc}")
        ep.failure, ep.done = "unparseable_action", True
        return
    if step.tool == FINISH:
        ep.pred = step.argument.strip()
        observe(FINISH_OBSERVATION)
        ep.done = True
        return
    tool = tools.get(step.tool)
    if tool is None:
        observe(f"Error: unknown tool {step.tool!r}; the tools are {sorted(tools)}")
        ep.failure, ep.done = "unknown_tool", True
        return
    observe(call_tool(tool, step.argument, timeout_s))
    if ep.turns >= max_turns:
        ep.failure, ep.done = "turn_limit", True


def rollout(
    work: Iterable[tuple[Question, int]],
    generate: Callable[[list[Request]], list[Generation]],
    messages: Callable[[Question, list[Message]], list[Message]],
    tools: dict[str, Tool],
    *,
    batch_size: int,
    max_turns: int,
    seed: int = 0,
    timeout_s: float = 10.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[Episode]:
    """Run episodes ``batch_size`` at a time (refilled as episodes end); yield each finished one."""
    pending = iter(work)
    active: list[Episode] = []
    while True:
        while len(active) < batch_size and not should_stop():
            nxt = next(pending, None)
            if nxt is None:
                break
            active.append(Episode(nxt[0], nxt[1]))
        if not active or should_stop():
            return
        requests = [
            Request(
                ep.question.id,
                ep.sample,
                ep.turns,
                ep.question.question,
                messages(ep.question, ep.history),
                turn_seed(seed, ep.question.id, ep.sample, ep.turns),
            )
            for ep in active
        ]
        generations = generate(requests)
        if len(generations) != len(requests):
            raise RuntimeError(f"backend answered {len(generations)} of {len(requests)} requests")
        for ep, gen in zip(active, generations, strict=True):
            advance(ep, gen, tools, max_turns=max_turns, timeout_s=timeout_s)
            if ep.done:
                yield ep
        active = [ep for ep in active if not ep.done]
