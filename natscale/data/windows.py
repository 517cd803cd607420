"""The examples of a prepare run as a stream, cut into windows that are packed one at a time.

``nat.select`` needs every trajectory at once; :class:`Selector` does the same one trajectory at a
time, so ``prepare`` holds one window of examples (``pack.window_examples``) instead of the whole
data. Within a window the examples are ordered as ``nat.select`` orders them (by class, top
first, then in load order: :func:`class_order`), so data that fits in one window gives exactly ``nat.select``'s
examples, and so exactly the rows of a global packing.

A per-class sample (``strategy.counts``) needs each class's size before the first example is
kept: :func:`sampled_positions` draws the same ``random.sample`` as ``nat.select`` from the sizes
counted by a first pass over the data, and the :class:`Selector` keeps the trajectories whose
position within their class was drawn.
"""

from __future__ import annotations

import random

import numpy as np

from natscale.config.prepare import StrategyConfig
from natscale.data import nat
from natscale.data.nat import Example
from natscale.data.prompts import TaskPrompt
from natscale.data.trajectory import Trajectory


def needs_sampling(strategy: StrategyConfig) -> bool:
    """True when ``strategy.counts`` may drop examples (a first pass must count the classes)."""
    return any(v is not None for v in (strategy.counts or {}).values())


def sampled_positions(
    available: list[int], strategy: StrategyConfig, seed: int
) -> list[np.ndarray | None]:
    """Per class, the sorted positions (within the class, in load order) to keep, or None for
    all: the draws of ``nat.select`` for classes of these sizes."""
    rng = random.Random(seed)
    counts = strategy.counts or {}
    out: list[np.ndarray | None] = []
    for name, size in zip(strategy.class_names(), available, strict=True):
        want = counts.get(name)
        if want is not None and want < size:
            keep = list(range(size))
            keep = keep[:want] if strategy.sample == "first" else sorted(rng.sample(keep, want))
            out.append(np.asarray(keep, dtype=np.int64))
        else:
            out.append(None)
    return out


class Selector:
    """``nat.select`` one trajectory at a time: class, sample, marked question, weight."""

    def __init__(
        self,
        strategy: StrategyConfig,
        prompts: dict[str, TaskPrompt],
        keep: list[np.ndarray | None] | None = None,
    ) -> None:
        self.strategy = strategy
        self.prompts = prompts
        self.names = strategy.class_names()
        self.keep = keep or [None] * len(self.names)
        self.available = [0] * len(self.names)
        self.kept = [0] * len(self.names)
        self.excluded = 0
        self._templates: dict[tuple[int, str], str] = {}
        self._weights = strategy.weights or {}

    def classify(self, traj: Trajectory) -> int | None:
        """The trajectory's class, counted; None when the strategy excludes it."""
        cls = nat.assign_class(traj, self.strategy)
        if cls is None:
            self.excluded += 1
            return None
        self.available[cls] += 1
        return cls

    def take(self, traj: Trajectory) -> Example | None:
        """The example of a labelled trajectory, or None (excluded, or not in the sample)."""
        cls = self.classify(traj)
        if cls is None:
            return None
        keep = self.keep[cls]
        if keep is not None:
            pos = self.available[cls] - 1
            i = int(np.searchsorted(keep, pos))
            if i == len(keep) or keep[i] != pos:
                return None
        self.kept[cls] += 1
        key = (cls, traj.task)
        if key not in self._templates:
            self._templates[key] = nat.question_template(
                cls, self.strategy, self.prompts.get(traj.task)
            )
        query = nat.format_question(traj.question, self._templates[key])
        return Example(traj, cls, float(self._weights.get(self.names[cls], 1.0)), query)

    def report(self) -> dict[str, dict[str, int]]:
        """``nat.select``'s per-class report (available / requested / kept, excluded)."""
        counts = self.strategy.counts or {}
        out: dict[str, dict[str, int]] = {
            name: {"available": a, "requested": counts.get(name), "kept": k}
            for name, a, k in zip(self.names, self.available, self.kept, strict=True)
        }
        out["excluded_by_strategy"] = {"count": self.excluded}
        return out


def class_order(window: list[Example]) -> list[int]:
    """The positions of ``window`` in ``nat.select``'s order: by class, then as given."""
    return sorted(range(len(window)), key=lambda i: window[i].cls)
