"""Generation backends of the rollout loop: ``hf`` (local transformers), ``openai`` (any
OpenAI-compatible ``/v1/completions`` server), ``scripted`` (replays recorded assistant turns).

Each takes a batch of :class:`Request` s (one per active episode) and returns one
:class:`Generation` per request, in order: the assistant turn's text up to the end of the turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from natscale.agent.loop import Generation
from natscale.data.render.messages import Message

__all__ = ["OBSERVATION_STOP", "Generation", "Request", "cut_at_stops"]

# The paper collects with the stop string "\nObservation: ": a model that goes on to write the
# tool's answer itself is cut there.
OBSERVATION_STOP = "\nObservation:"


@dataclass(frozen=True)
class Request:
    qid: str
    sample: int
    turn: int  # 0-based assistant turn within the episode
    question: str
    messages: list[Message]  # prompt messages + history, up to the turn to generate
    seed: int


def cut_at_stops(text: str, stops: list[str]) -> str:
    """``text`` up to the first stop string (exclusive), stripped."""
    end = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i != -1:
                end = min(end, i)
    return text[:end].strip()
