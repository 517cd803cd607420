"""The paper's ReAct rollout loop, batched across episodes.

The loop is the protocol; what writes the assistant turns is a *backend*: a model
(``natscale eval``'s ``hf`` / ``openai``) or a script (the example teacher, whose turns
:func:`play_script` runs through this same loop, so bundled data and real rollouts have one
format by construction). Each step asks the backend for the next assistant turn of every active episode, parses its
``Action: tool[argument]``, calls the tool and appends ``Observation: ...``. An episode ends on
``finish[answer]`` (observation ``Episode finished``) or on a failure, counted by kind:

- ``unparseable_action``: the turn has no ``Action: tool[argument]``;
- ``unknown_tool``: the action names a tool that is not in the registry;
- ``turn_limit``: ``max_depth + 1`` turns without ``finish`` (the paper's depth 6 = 7 turns);
- ``context_overflow``: the prompt no longer fits the model's context.

A turn the backend cut at ``loop.max_new_tokens`` before its end of turn (a reasoning model that
thinks longer) is counted in the episode's ``truncated_turns``; it is parsed as it is.

With native tool calls (:func:`advance_tool_calls`, ``loop.protocol: tool_calls``) the turn's
calls are read by a response parser (:mod:`natscale.agent.tool_calls`) and each result is a
``tool`` message; ``finish``'s ``answer``, or a turn without a call (its text), ends the episode
(a ``finish`` call without its one argument is an ``Error: ...`` result and the episode goes on).

Tool errors (a bad expression, a timeout) are observations ``Error: ...`` and the episode goes
on, as in the paper. Finished episodes are handed to ``on_done`` at once; when ``should_stop()``
turns true the loop returns after the current step and drops the unfinished episodes (a resumed
run redoes them).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from natscale.agent.react import (
    FINISH,
    FINISH_OBSERVATION,
    ReActParseError,
    format_observation,
    parse_step,
)
from natscale.agent.tool_calls import (
    ParsedTurn,
    ToolCallParseError,
    call_id,
    finish_answer,
    finish_answer_key,
)
from natscale.agent.tools import Tool, argument_error, call_tool, call_tool_with

FAILURES = ("unparseable_action", "unknown_tool", "turn_limit", "context_overflow")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: Any = None  # the gold answer (text, number or bool); the loop never reads it


@dataclass(frozen=True)
class Generation:
    """What a backend wrote for one episode's next assistant turn."""

    text: str
    tokens: int  # generated tokens (for tokens/s)
    overflow: bool = False  # the prompt (plus room to answer) did not fit the context
    truncated: bool = False  # cut at loop.max_new_tokens before its end of turn
    # the message a ``/v1/chat/completions`` server answered (its ``tool_calls`` parsed by the
    # server); ``text`` is then its content, after its reasoning in ``<think>`` tags
    message: dict[str, Any] | None = None
    # the server generated the turn but could not read it (its tool parser failed): the turn
    # is an unparseable_action with this message
    error: str | None = None


@dataclass
class Episode:
    """One episode; ``history`` is the NAT release ``conversations`` so far: assistant turns
    (``loss`` true) and ``user`` turns holding ``Observation: ...`` (``loss`` false)."""

    question: Question
    sample: int
    history: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    generated_tokens: int = 0
    truncated_turns: int = 0  # turns cut at loop.max_new_tokens
    pred: str | None = None
    failure: str | None = None
    error: str | None = None  # what made the last turn fail (unparseable_action, unknown_tool)
    done: bool = False

    def count_turn(self, gen: Generation) -> bool:
        """Count a generated turn; False (the episode ends) if its prompt did not fit or the
        server could not read it."""
        if gen.overflow:
            self.failure, self.done = "context_overflow", True
            return False
        self.turns += 1
        self.generated_tokens += gen.tokens
        self.truncated_turns += gen.truncated
        if gen.error is not None:
            self.history.append({"role": "assistant", "content": gen.text, "loss": True})
            self.failure, self.error, self.done = "unparseable_action", gen.error, True
            return False
        return True

    def conversations(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self.history]


def turn_seed(seed: int, qid: str, sample: int, turn: int) -> int:
    return zlib.crc32(f"{seed}:{qid}:{sample}:{turn}".encode()) & 0x7FFFFFFF


def advance(
    ep: Episode, gen: Generation, tools: dict[str, Tool], *, max_turns: int, timeout_s: float
) -> None:
    """Apply one generated assistant turn to ``ep`` (see the module docstring)."""
    if not ep.count_turn(gen):
        return
    ep.history.append({"role": "assistant", "content": gen.text, "loss": True})

    def observe(text: str) -> None:
        ep.history.append({"role": "user", "content": format_observation(text), "loss": False})

    try:
        step = parse_step(gen.text)
    except ReActParseError as exc:
        observe(f"Error: {exc}")
        ep.failure, ep.error, ep.done = "unparseable_action", str(exc), True
        return
    if step.tool == FINISH:
        ep.pred = step.argument.strip()
        observe(FINISH_OBSERVATION)
        ep.done = True
        return
    tool = tools.get(step.tool)
    if tool is None:
        ep.error = f"unknown tool {step.tool!r}; the tools are {sorted(tools)}"
        observe(f"Error: {ep.error}")
        ep.failure, ep.done = "unknown_tool", True
        return
    observe(call_tool(tool, step.argument, timeout_s))
    if ep.turns >= max_turns:
        ep.failure, ep.done = "turn_limit", True


def finish_argument(tools: dict[str, Tool]) -> str:
    """The name of ``finish``'s one parameter: ``answer``, or what ``tools.schemas`` renamed it to."""
    finish = tools.get(FINISH)
    return finish_answer_key(finish.schema if finish is not None else None)


def advance_tool_calls(
    ep: Episode,
    gen: Generation,
    tools: dict[str, Tool],
    *,
    parse: Callable[[Episode, Generation], ParsedTurn],
    max_turns: int,
    timeout_s: float,
) -> None:
    """Apply one generated turn with native tool calls to ``ep`` (the module docstring).

    The history holds OpenAI-style messages: ``{"role": "assistant", "content", "tool_calls":
    [{"id", "name", "arguments"}], "loss": true}`` and ``{"role": "tool", "tool_call_id",
    "name", "content", "loss": false}``; ``parse(ep, gen)`` reads the turn."""
    if not ep.count_turn(gen):
        return
    try:
        turn = parse(ep, gen)
    except ToolCallParseError as exc:
        ep.history.append({"role": "assistant", "content": gen.text, "loss": True})
        ep.failure, ep.error, ep.done = "unparseable_action", str(exc), True
        return
    calls = [
        {"id": call_id(ep.turns, k), "name": c.name, "arguments": c.arguments}
        for k, c in enumerate(turn.calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": turn.history_content()}
    ep.history.append(
        {**message, "tool_calls": calls, "loss": True} if calls else {**message, "loss": True}
    )
    if not calls:  # a chat agent's answer, unless the turn was cut short
        if turn.content and not gen.truncated:
            ep.pred, ep.done = turn.content, True
        else:
            ep.failure, ep.done = "unparseable_action", True
            ep.error = (
                "the turn was cut at loop.max_new_tokens before a tool call or its end"
                if gen.truncated
                else "the turn has neither a tool call nor an answer"
            )
        return
    answer_key = finish_argument(tools)
    for call in calls:
        tool = tools.get(call["name"])
        if call["name"] == FINISH:
            answer = finish_answer(call["arguments"], answer_key)
            if answer is not None:
                ep.pred, ep.done = answer, True
                return
            # no answer, or not under its name: an error result, and the episode goes on
            observation = argument_error(FINISH, answer_key, call["arguments"])
        elif tool is None:
            ep.error = f"unknown tool {call['name']!r}; the tools are {sorted(tools)}"
            ep.failure, ep.done = "unknown_tool", True
            observation = f"Error: {ep.error}"
        else:
            observation = call_tool_with(tool, call["arguments"], timeout_s)
        ep.history.append(
            {
                "role": "tool",
                "tool_call_id": call["id"],
                "name": call["name"],
                "content": observation,
                "loss": False,
            }
        )
        if ep.done:
            return
    if ep.turns >= max_turns:
        ep.failure, ep.done = "turn_limit", True


def rollout(
    work: Iterable[tuple[Question, int]],
    generate: Callable[[list[Episode]], list[Generation]],
    tools: dict[str, Tool],
    *,
    batch_size: int,
    max_turns: int,
    timeout_s: float = 10.0,
    should_stop: Callable[[], bool] = lambda: False,
    step: Callable[..., None] = advance,
) -> Iterator[Episode]:
    """Run episodes ``batch_size`` at a time (refilled as episodes end); yield each finished one.

    ``generate`` gets the active episodes (``turns`` = the index of the turn to write; the
    episode's :func:`turn_seed` is ``turn_seed(seed, id, sample, turns)``) and returns one
    :class:`Generation` per episode, in order. ``step`` applies a turn: :func:`advance` (ReAct)
    or :func:`advance_tool_calls` with its ``parse`` bound."""
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
        generations = generate(active)
        if len(generations) != len(active):
            raise RuntimeError(f"backend answered {len(generations)} of {len(active)} episodes")
        for ep, gen in zip(active, generations, strict=True):
            step(ep, gen, tools, max_turns=max_turns, timeout_s=timeout_s)
            if ep.done:
                yield ep
        active = [ep for ep in active if not ep.done]


def play_script(
    question: Question, turns: list[str], tools: dict[str, Tool], *, max_turns: int
) -> Episode:
    """One episode whose assistant turns are ``turns`` (a scripted backend): the loop parses
    them, calls the real tools and ends the episode exactly as for a model."""

    def scripted(episodes: list[Episode]) -> list[Generation]:
        return [Generation(turns[ep.turns] if ep.turns < len(turns) else "", 0) for ep in episodes]

    (episode,) = rollout(
        [(question, 0)], scripted, tools, batch_size=1, max_turns=max_turns, timeout_s=None
    )
    return episode
