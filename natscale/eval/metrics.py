"""Evaluation metrics with bootstrap 95% intervals.

Headline metrics per task: ``accuracy`` (math: the paper's exact match; yesno: yes/no accuracy)
and, for qa, ``em`` and ``f1`` (SQuAD). With ``n`` samples per question the metric is the mean
over questions of the mean over samples, and ``pass@k`` (the unbiased estimator of Chen et al.
2021) is reported for k = 1, 2, 4, ... up to n. Each interval resamples *questions* with
replacement (``bootstrap`` times, fixed seed) and takes the 2.5th / 97.5th percentiles.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from math import comb
from typing import Any

import numpy as np

from natscale.agent.loop import FAILURES


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _ci(values: np.ndarray, bootstrap: int, seed: int) -> list[float] | None:
    if bootstrap <= 0 or len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(bootstrap, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]


def summarize(
    records: list[dict[str, Any]], task: str, *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    by_q: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_q[str(rec["id"])].append(rec)
    qids = sorted(by_q)
    reward = np.array([np.mean([bool(r["info"]["reward"]) for r in by_q[q]]) for q in qids])
    f1 = np.array([np.mean([float(r["info"].get("f1") or 0.0) for r in by_q[q]]) for q in qids])
    metrics: dict[str, Any] = {}
    names = {"math": "accuracy", "yesno": "accuracy", "qa": "em"}
    metrics[names[task]] = _metric(reward, bootstrap, seed)
    if task == "qa":
        metrics["f1"] = _metric(f1, bootstrap, seed + 1)
    samples = min((len(v) for v in by_q.values()), default=0)
    if samples > 1:
        ks = sorted({2**i for i in range(samples.bit_length()) if 2**i <= samples} | {samples})
        for k in ks:
            per_q = np.array(
                [
                    pass_at_k(len(by_q[q]), sum(bool(r["info"]["reward"]) for r in by_q[q]), k)
                    for q in qids
                ]
            )
            metrics[f"pass@{k}"] = _metric(per_q, bootstrap, seed + 10 + k)
    failures = Counter(r["info"].get("failure") for r in records)
    return {
        "task": task,
        "questions": len(qids),
        "episodes": len(records),
        "samples_per_question": samples,
        "metrics": metrics,
        "failures": {kind: failures.get(kind, 0) for kind in FAILURES},
        "finished": sum(bool(r["info"].get("finished")) for r in records),
        "truncated_turns": sum(int(r["info"].get("truncated_turns") or 0) for r in records),
        "mean_turns": round(float(np.mean([r["info"].get("turns", 0) for r in records])), 4)
        if records
        else 0.0,
    }


def _metric(values: np.ndarray, bootstrap: int, seed: int) -> dict[str, Any]:
    return {
        "value": round(float(values.mean()), 6) if len(values) else 0.0,
        "ci95": _ci(values, bootstrap, seed),
    }
