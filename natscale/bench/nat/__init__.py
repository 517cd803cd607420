"""``natscale bench nat``: vanilla vs NUT vs NAT vs fine-grained NAT on the synthetic math agent task.

The protocol is docs/nat-benchmark.md; ``presets`` holds its numbers, ``data`` builds the pool
and the prepared datasets, ``runner`` trains and evaluates every run (resumable), ``report``
aggregates, and :func:`run_benchmark` ties them together and writes the results.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from natscale.bench.nat.presets import PRESETS, Preset


def run_benchmark(
    preset: Preset,
    work: Path,
    results: Path,
    *,
    calibrate: bool = False,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or finish) the protocol in ``work``; write ``nat_<preset>_<device>_<time>.{json,md,png}``
    under ``results``; return the record (its ``paths`` say where the files went). With
    ``calibrate``, only the calibration runs (``vanilla`` on every success of the pool, per seed;
    with ``calibration: positives`` the base model and ``vanilla`` at every P, per seed).
    ``command``: what the record names as its command (default: ``natscale`` and this process's
    arguments)."""
    from natscale.atomic import atomic_write_bytes
    from natscale.bench.nat import report
    from natscale.bench.nat.runner import run_all
    from natscale.bench.record import device_tag, write_json_atomic
    from natscale.env import machine

    started = time.perf_counter()
    data, runs = run_all(preset, work, say, calibrate=calibrate)
    env = machine()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kind = f"{preset.name}-calibration" if calibrate else preset.name
    stem = f"nat_{kind}_{device_tag(env)}_{stamp}"
    rows = report.aggregate(preset, runs)
    pairs = report.paired(preset, runs)
    title = (
        f"natscale bench nat --preset {preset.name}{' --calibrate' if calibrate else ''}: "
        f"{preset.layers}-layer Llama "
        f"(hidden {preset.hidden}), {preset.steps} steps, {len(preset.seeds)} seed(s), "
        f"{preset.test_questions} test questions"
    )
    if preset.base_steps and (not calibrate or preset.calibration == "positives"):
        title += f"; every run starts from the base model ({preset.base_steps} steps of vanilla)"
    results.mkdir(parents=True, exist_ok=True)
    record = {
        "kind": "nat-benchmark-calibration" if calibrate else "nat-benchmark",
        "preset": preset.as_dict(),
        "time_utc": stamp,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "run_seconds": round(sum(sum(r["seconds"].values()) for r in runs), 1),
        "work_dir": str(work),
        "data": data,
        "rows": rows,
        "paired": pairs,
        "runs": [_without_rewards(r) for r in runs],
        "interval": "95%: Student t over seeds (one seed: the eval's bootstrap over questions)",
        "environment": env,
        "command": command or " ".join(["natscale", *sys.argv[1:]]),
    }
    paths = {
        "json": results / f"{stem}.json",
        "md": results / f"{stem}.md",
        "png": results / f"{stem}.png",
    }
    header = f"# {title}\n\nDevice {env.get('device')}, commit {env.get('git_commit')}; {stamp}."
    if calibrate:
        record["calibration"] = report.calibration_verdict(preset, rows)
        header += f"\n\nCalibration: {record['calibration'] or 'no vanilla run to decide it'}."
    atomic_write_bytes(paths["md"], report.markdown(preset, rows, header, pairs).encode())
    report.plot(preset, rows, paths["png"], title)
    record["paths"] = {k: str(v) for k, v in paths.items()}
    write_json_atomic(paths["json"], record)
    return record


def _without_rewards(run: dict) -> dict:
    """A run's result as the record keeps it: its per-question rewards (in the work folder's
    result.json) are summed up by the record's ``paired``."""
    return {
        k: {kk: vv for kk, vv in v.items() if kk != "rewards"} if k.endswith("_marker") else v
        for k, v in run.items()
    }


__all__ = ["PRESETS", "Preset", "run_benchmark"]
