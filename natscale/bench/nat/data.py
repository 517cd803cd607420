"""The benchmark's data: one generated pool, nested subsets per P, one prepared dataset per strategy.

The pool is the bundled synthetic math ReAct task (``natscale.agent.scripted``) with the terse
teacher (``verbosity=0``): training questions with 1-3 trajectories each, and held-out test
questions drawn with their own seed, none of them a training question. For each P the subset is
the first P successes and the first ``negatives_per_positive * P`` failures of the pool in
generation order, so the subsets are nested (the P=500 data is part of the P=2000 data) and every
strategy of one P sees exactly the same trajectories: ``vanilla`` drops the failures, ``nut``
trains them like successes, ``nat`` marks both classes, ``nat-fine`` marks each failure kind.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from natscale.atomic import atomic_write_bytes, atomic_write_json
from natscale.bench.nat.presets import FINE_KINDS, FINE_MARKERS, FINE_SCORES, Preset

REPO = Path(__file__).resolve().parents[3]
TOKENIZER = REPO / "examples" / "tokenizer"


# base_prompt "both": the base model's successes under NAT's success prompt, and that prompt file
# (the task prompt with the success template as its plain one, so that `vanilla` renders it)
SUCCESS_HALF = "trajectories-success-prompt.json"
SUCCESS_PROMPT = "prompt-success.json"

TOOLS = ("calculate",)  # the agent's tools (finish is always there)
ALL = 0  # P = ALL: every success of the pool and no failure (the calibration's data)
BASE = -1  # the base model's data: the successes that no P subset holds (presets with base_steps)


class BenchDataError(RuntimeError):
    """The pool cannot supply what the preset asks for."""


def subset(p: int) -> str:
    """The folder name of the P subset: ``P500``, ``Pall`` for every success of the pool,
    ``Pbase`` for the base model's successes."""
    return {ALL: "Pall", BASE: "Pbase"}.get(p, f"P{p}")


class PoolTooSmallError(BenchDataError, ValueError):
    """The preset (its ``--positives``) asks for more than its pool has: bad input (exit 2)."""


def _generate_pool(preset: Preset):
    """The preset's generated pool (the same preset gives the same pool; generated once per
    process: ``check_pool`` and ``build_pool`` share it; read it, never change it)."""
    return _pool(
        preset.pool_seed,
        preset.pool_questions,
        preset.test_questions,
        preset.max_steps,
        preset.failures,
        preset.instruction,
    )


@functools.lru_cache(maxsize=1)
def _pool(seed: int, questions: int, test: int, max_steps: int, failures: str, instruction: str):
    from natscale.agent.scripted.dataset import generate

    pool = generate(seed, questions, test, verbosity=0, max_steps=max_steps, failures=failures)
    pool.prompt["instruction"] = instruction
    for traj in pool.trajectories:
        traj["info"]["progress"] = FINE_SCORES[traj["info"]["kind"]]
    return pool


def _split(pool) -> tuple[list[int], list[int]]:
    """(indices of the pool's successes, of its failures)."""
    rewards = [bool(t["info"]["reward"]) for t in pool.trajectories]
    return [i for i, r in enumerate(rewards) if r], [i for i, r in enumerate(rewards) if not r]


def check_pool(preset: Preset, pool=None) -> None:
    """Refuse, before anything is written, a preset whose pool cannot supply every P's successes
    and failures or the base model's successes (``pool``: already generated, else generated)."""
    positives, negatives = _split(pool if pool is not None else _generate_pool(preset))
    for p in preset.positives:
        n_neg = preset.negatives_per_positive * p
        if p > len(positives) or n_neg > len(negatives):
            raise PoolTooSmallError(
                f"P={p} needs {p} successes and {n_neg} failures; the pool of "
                f"{preset.pool_questions} questions has {len(positives)} and {len(negatives)}: "
                "choose a smaller --positives, or raise pool_questions"
            )
    if preset.base_steps:
        start = preset.base_from or max(preset.positives)
        if start < max(preset.positives):
            raise PoolTooSmallError(
                f"base_from={start} would give the base model successes of P="
                f"{max(preset.positives)}: set base_from to {max(preset.positives)} or more"
            )
        if not positives[start:]:
            raise PoolTooSmallError(
                f"the base model needs successes beyond the first {start}; the pool has "
                f"{len(positives)}: choose a smaller --positives, or raise pool_questions"
            )


def build_pool(preset: Preset, root: Path) -> dict[str, Any]:
    """Generate the pool and write every P's files under ``root``; returns what was written.

    Files: ``questions.jsonl`` (training questions), ``test.jsonl`` (held out), ``prompt.json``,
    ``P<P>/trajectories.json`` per P (NAT release format, ``info.progress`` = the nat-fine score
    of the trajectory's kind), ``Pall/trajectories.json`` (every success: the calibration's
    data) and, with ``base_steps``, ``Pbase/trajectories.json`` (the successes from
    ``base_from``, by default after the largest P's: the base model's data; with ``base_prompt:
    both`` every other one of them goes to ``Pbase/trajectories-success-prompt.json``, prepared
    with ``prompt-success.json``). Written atomically; the same preset gives the same bytes.
    """
    from natscale.agent.scripted.dataset import dumps_prompt, dumps_questions, dumps_trajectories

    pool = _generate_pool(preset)
    check_pool(preset, pool)
    positives, negatives = _split(pool)
    train_texts = {q["question"] for q in pool.questions}
    leaked = [q["id"] for q in pool.test_questions if q["question"] in train_texts]
    if leaked:  # the generator promises this; the benchmark's claim rests on it
        raise BenchDataError(f"test questions also in the training pool: {leaked[:5]}")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / "questions.jsonl", dumps_questions(pool.questions).encode())
    atomic_write_bytes(root / "test.jsonl", dumps_questions(pool.test_questions).encode())
    atomic_write_bytes(root / "prompt.json", dumps_prompt(pool.prompt).encode())
    subsets: dict[str, Any] = {}
    for p in (*preset.positives, ALL):
        n_neg = 0 if p == ALL else preset.negatives_per_positive * p
        p = len(positives) if p == ALL else p
        picked = [pool.trajectories[i] for i in sorted(positives[:p] + negatives[:n_neg])]
        name = subset(ALL if n_neg == 0 else p)
        path = root / name / "trajectories.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, dumps_trajectories(picked).encode())
        kinds = {k: sum(t["info"]["kind"] == k for t in picked) for k in FINE_KINDS}
        subsets[name] = {"positives": p, "negatives": n_neg, "kinds": kinds}
    if preset.base_steps:
        rest = positives[preset.base_from or max(preset.positives) :]
        picked = [pool.trajectories[i] for i in rest]
        path = root / subset(BASE) / "trajectories.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if preset.base_prompt == "both":  # every other success under NAT's success prompt
            success_prompt = {**pool.prompt, "templates": dict(pool.prompt["templates"])}
            success_prompt["templates"]["plain"] = pool.prompt["templates"]["success"]
            atomic_write_bytes(root / SUCCESS_PROMPT, dumps_prompt(success_prompt).encode())
            atomic_write_bytes(
                path.with_name(SUCCESS_HALF), dumps_trajectories(picked[1::2]).encode()
            )
            picked_plain = picked[::2]
        else:
            picked_plain = picked
        atomic_write_bytes(path, dumps_trajectories(picked_plain).encode())
        kinds = {k: sum(t["info"]["kind"] == k for t in picked) for k in FINE_KINDS}
        subsets[subset(BASE)] = {"positives": len(rest), "negatives": 0, "kinds": kinds}
    summary = {
        "pool_questions": len(pool.questions),
        "pool_trajectories": len(pool.trajectories),
        "pool_successes": len(positives),
        "pool_failures": len(negatives),
        "test_questions": len(pool.test_questions),
        "subsets": subsets,
    }
    atomic_write_json(root / "pool.json", summary)
    return summary


def strategy_section(name: str) -> dict[str, Any]:
    """The ``strategy`` section of the prepare config for one benchmark strategy."""
    if name in ("vanilla", "nut"):
        return {"name": name}
    if name == "nat":
        return {"name": "nat", "position": "suffix"}  # the paper's wording, from prompt.json
    if name == "nat-fine":
        mins = {"success": 1.0, "wrong_answer": 0.5, "bad_tool_args": 0.25, "unfinished": None}
        return {
            "name": "nat-fine",
            "position": "suffix",
            "buckets": [
                {
                    "name": k,
                    "marker": FINE_MARKERS[k],
                    **({} if mins[k] is None else {"min": mins[k]}),
                }
                for k in FINE_KINDS
            ],
        }
    raise ValueError(f"unknown strategy {name!r}; one of vanilla, nut, nat, nat-fine")


def prepare_config(preset: Preset, root: Path, p: int, strategy: str) -> dict[str, Any]:
    """The full ``natscale prepare`` config of strategy ``strategy`` at ``P=p``."""
    halves = [("trajectories.json", "prompt.json", {})]
    native = {"native_tools": list(TOOLS)} if preset.protocol == "tool_calls" else {}
    if p == BASE and preset.base_prompt == "both":  # a task name of its own: another prompt file
        halves.append((SUCCESS_HALF, SUCCESS_PROMPT, {"task": "math-success-prompt"}))
    return {
        "seed": 42,
        "num_proc": 1,
        "sources": [
            {
                "format": "nat",
                "paths": [str(root / subset(p) / trajectories)],
                "questions": [str(root / "questions.jsonl")],
                "prompt": str(root / prompt),
                "score_field": "info.progress",
                **task,
                **native,
            }
            for trajectories, prompt, task in halves
        ],
        "outcome": {"success": "field", "score": "field", "unfinished": "keep", "empty": "skip"},
        "strategy": strategy_section(strategy),
        "render": {"tokenizer": str(TOKENIZER), "template": "llama2", "instruction": "turn"},
        "pack": {"max_seq_len": preset.max_seq_len, "algorithm": "bfd_repair"},
    }
