"""Run the protocol: prepare per strategy and P, then train and evaluate every (P, strategy, seed).

Everything lives under one work folder that the benchmark marks as its own (``.natscale-bench``)::

    WORK/preset.json                  the preset the folder was started with
    WORK/data/                        the pool and one prepared dataset per (P, strategy)
    WORK/runs/P<P>/<strategy>/seed<S>/
        train.yaml, train.log, train/     natscale train (its own process; train/hf is the export)
        eval-success/, eval-failure/      natscale eval with the success / a failure marker
        result.json                       written last: a run with it is never run again

Training and evaluation run as the user would run them, ``natscale train`` and ``natscale eval``
in child processes, ``preset.jobs`` runs at a time. An interrupted benchmark continues where it
stopped: finished runs are skipped, a half-trained run resumes from its last checkpoint
(``--resume``) and a half-done evaluation continues (``--resume``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from natscale.atomic import atomic_write_bytes, atomic_write_json
from natscale.bench.nat.behaviour import behaviour
from natscale.bench.nat.data import (
    ALL,
    BASE,
    TOOLS,
    build_pool,
    check_pool,
    prepare_config,
    subset,
)
from natscale.bench.nat.presets import Preset
from natscale.eval.paired import question_scores

MARKER = ".natscale-bench"


class BenchNatError(RuntimeError):
    """A step failed; the message says which and where its log is."""


class WorkDirError(BenchNatError, ValueError):
    """The work folder cannot be used (bad input: exit 2)."""


@dataclass(frozen=True)
class Run:
    p: int
    strategy: str
    seed: int

    @property
    def name(self) -> str:
        return f"{subset(self.p)}/{self.strategy}/seed{self.seed}"


def plan(preset: Preset, *, calibrate: bool = False) -> list[Run]:
    """Every run of the comparison, in the order they start: seed by seed, so a stopped benchmark
    has whole seeds (every P and strategy) done;
    with ``calibrate`` the calibration's runs: ``vanilla`` on every success, one per seed (the
    learning curve has a sharp step, so one seed's accuracy is not a measure of the setting), or,
    with ``calibration: positives``, the base model and ``vanilla`` at every P and seed."""
    # with base_steps, the base model comes first: every other run starts from it
    base = [base_run(preset)] if preset.base_steps else []
    if calibrate and preset.calibration == "positives":  # the comparison's own vanilla runs
        return base + [Run(p, "vanilla", seed) for seed in preset.seeds for p in preset.positives]
    if calibrate:
        return [Run(ALL, "vanilla", seed) for seed in preset.seeds]
    return base + [
        Run(p, strategy, seed)
        for seed in preset.seeds
        for p in preset.positives
        for strategy in preset.strategies
    ]


def claim_work_dir(work: Path, preset: Preset) -> None:
    """Use ``work`` only if it is new, empty, or a benchmark folder of the same preset."""
    wanted = json.loads(json.dumps(preset.as_dict()))  # as saved: tuples become lists
    wanted.pop("jobs")  # how many runs share the machine changes no run's result
    if work.exists() and not work.is_dir():
        raise WorkDirError(f"{work} exists and is not a directory; choose another --work-dir")
    if work.exists() and not (work / MARKER).exists() and any(work.iterdir()):
        raise WorkDirError(
            f"{work} is not empty and was not made by `natscale bench nat`; "
            "choose another --work-dir"
        )
    saved = work / "preset.json"
    if saved.exists():
        have = json.loads(saved.read_text())
        # a field added after the folder was started: its default keeps what the folder's runs did
        for key, default in _field_defaults().items():
            have.setdefault(key, default)
        have.pop("jobs", None)  # folders started before jobs was left out
        if have != wanted:
            diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
            raise WorkDirError(
                f"{work} holds runs of another protocol (differs in: {', '.join(diff)}); its "
                "results would not be comparable: choose another --work-dir"
            )
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).touch()
    if not saved.exists():
        atomic_write_json(saved, wanted)


def _field_defaults() -> dict[str, Any]:
    """Every preset field that has a default, as saved (tuples become lists)."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(Preset)
        if f.default is not dataclasses.MISSING
    }
    return json.loads(json.dumps(defaults))


def prepare_all(
    preset: Preset, work: Path, runs: list[Run], say: Callable[[str], None]
) -> dict[str, Any]:
    """The pool and one prepared dataset per (P, strategy) of ``runs``; skipped when present."""
    from natscale.config.prepare import PrepareConfig
    from natscale.data.prepare import prepare

    data = work / "data"
    if (data / "pool.json").exists():
        pool = json.loads((data / "pool.json").read_text())
    else:
        say("generating the task pool")
        pool = build_pool(preset, data)
    prepared: dict[str, Any] = {}
    for p, strategy in dict.fromkeys((run.p, run.strategy) for run in runs):
        out = data / subset(p) / strategy
        if not (out / "stats.json").exists():
            say(f"preparing {subset(p)} {strategy}")
            config = PrepareConfig.model_validate(prepare_config(preset, data, p, strategy))
            prepare(config, out, progress=False)
        stats = json.loads((out / "stats.json").read_text())
        prepared[f"{subset(p)}/{strategy}"] = {
            "per_class": stats["per_class"],
            "total": stats["total"],
            "rows": stats["packing"]["rows"],
            "packing_efficiency": stats["packing"]["efficiency"],
        }
    return {"pool": pool, "prepared": prepared}


def run_dir_of(work: Path, run: Run) -> Path:
    return work / "runs" / subset(run.p) / run.strategy / f"seed{run.seed}"


def base_run(preset: Preset) -> Run:
    """The run that trains the base model (presets with ``base_steps``)."""
    return Run(BASE, "vanilla", preset.seeds[0])


def train_config(preset: Preset, work: Path, run: Run, run_dir: Path) -> dict[str, Any]:
    gpu = preset.precision != "fp32"
    model: dict[str, Any] = {"config": str(work / "model" / "config.json")}
    steps, lr = preset.steps, preset.lr
    if run.p == BASE:
        steps, lr = preset.base_steps, preset.base_lr
    elif preset.base_steps and run.p != ALL:  # from the base model (a calibration: from init)
        model = {"path": str(run_dir_of(work, base_run(preset)) / "train" / "hf")}
    return {
        "output_dir": str(run_dir / "train"),
        "model": {**model, "activation_checkpointing": False},
        "data": {
            "path": str(work / "data" / subset(run.p) / run.strategy),
            "shuffle": True,
            "micro_batch_rows": preset.micro_batch_rows,
        },
        "train": {
            "seed": run.seed,
            "precision": preset.precision,
            "steps": steps,
            "grad_accum": preset.grad_accum,
            "loss_norm": "token",
            "lr": lr,
            "lr_schedule": "cosine",
            "warmup_steps": preset.warmup_steps,
            "min_lr_ratio": 0.1,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
        },
        "deepspeed": {
            "config": "ds_configs/zero3_bf16.json" if gpu else "ds_configs/zero3_cpu.json"
        },
        "checkpoint": {"every_steps": max(steps // 2, 1), "keep_last": 1, "export_hf": True},
        "logging": {"tensorboard": False, "progress_bar": False},
    }


def eval_config(preset: Preset, work: Path, run_dir: Path) -> dict[str, Any]:
    return {
        "backend": "hf",
        "model": str(run_dir / "train" / "hf"),
        "questions": [str(work / "data" / "test.jsonl")],
        "task": "math",
        "tools": {"names": list(TOOLS)},
        "loop": {
            "protocol": preset.protocol,
            "max_depth": preset.max_depth,
            "max_new_tokens": preset.max_new_tokens,
        },
        "sampling": {"temperature": 0.0},
        "hf": {"batch_size": preset.eval_batch},
        "bootstrap": 1000,
    }


def failure_marker(strategy: str) -> str | None:
    """The marker a controllability eval uses: NAT's failure class, nat-fine's lowest bucket."""
    return {"nat": "failure", "nat-fine": "unfinished"}.get(strategy)


class _Children:
    """Child processes in flight, so an interrupt stops them too."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen] = set()

    def run(self, argv: list[str], log: Path, env: dict[str, str], what: str) -> None:
        with open(log, "ab") as fh:
            fh.write(f"\n$ {' '.join(argv)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
            with self.lock:
                self.procs.add(proc)
            try:
                code = proc.wait()
            finally:
                with self.lock:
                    self.procs.discard(proc)
        if code != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise BenchNatError(f"{what} failed (exit {code}); see {log}:\n" + "\n".join(tail))

    def stop(self) -> None:
        with self.lock:
            for proc in self.procs:
                proc.terminate()


def _child_env(preset: Preset) -> dict[str, str]:
    from natscale.train.dist import free_port

    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(preset.threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        GLOO_SOCKET_IFNAME=env.get("GLOO_SOCKET_IFNAME", "lo"),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    if preset.precision == "fp32":
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    return atomic_write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode())


def _eval(
    children: _Children, preset: Preset, work: Path, run: Run, run_dir: Path, marker: str | None
) -> dict[str, Any]:
    out = _eval_dir(run_dir, marker)
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("complete"):
        return _metrics(json.loads(summary.read_text()), out)
    cfg = _write_yaml(run_dir / "eval.yaml", eval_config(preset, work, run_dir))
    argv = [sys.executable, "-m", "natscale.cli", "eval", str(cfg), "--no-progress"]
    argv += ["--data", str(work / "data" / subset(run.p) / run.strategy), "--out", str(out)]
    if marker is not None:
        argv += ["--set", f"prompt.marker={marker}"]
    if run.p == BASE and preset.base_prompt == "both":  # its data mixes two prompt files
        argv += ["--set", f"prompt.file={work / 'data' / 'prompt.json'}"]
    if out.exists():
        argv.append("--resume")
    children.run(argv, run_dir / "eval.log", _child_env(preset), f"{run.name}: natscale eval")
    return _metrics(json.loads(summary.read_text()), out)


def _metrics(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    acc = summary["metrics"]["accuracy"]
    return {
        "accuracy": acc["value"],
        "ci95": acc.get("ci95"),
        "episodes": summary["episodes"],
        "finished": summary["finished"],
        "failures": summary["failures"],
        "mean_turns": summary["mean_turns"],
        "behaviour": behaviour(out / "episodes.jsonl"),
        "rewards": _rewards(out),
    }


def _rewards(eval_dir: Path) -> dict[str, float]:
    """Each test question's reward (its mean over samples): what the report pairs."""
    return {q: score for q, (_, score) in (question_scores(eval_dir) or {}).items()}


def _eval_dir(run_dir: Path, marker: str | None) -> Path:
    return run_dir / ("eval-success" if marker is None else "eval-failure")


def _with_behaviour(result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A result written before results held the behaviours and the per-question rewards, with
    them (from its episodes; without those the report leaves them out)."""
    for key, marker in (("success_marker", None), ("failure_marker", "failure")):
        episodes = _eval_dir(run_dir, marker) / "episodes.jsonl"
        if key not in result or not episodes.is_file():
            continue
        if "behaviour" not in result[key]:
            result[key]["behaviour"] = behaviour(episodes)
        if "rewards" not in result[key]:
            result[key]["rewards"] = _rewards(episodes.parent)
    return result


def execute(children: _Children, preset: Preset, work: Path, run: Run) -> dict[str, Any]:
    """Train and evaluate one run (or pick up its result); returns the result record."""
    run_dir = run_dir_of(work, run)
    result_path = run_dir / "result.json"
    if result_path.exists():
        return {**_with_behaviour(json.loads(result_path.read_text()), run_dir), "reused": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (run_dir / "train" / "hf" / "config.json").exists():
        cfg = _write_yaml(run_dir / "train.yaml", train_config(preset, work, run, run_dir))
        argv = [sys.executable, "-m", "natscale.cli", "train", str(cfg), "--resume"]
        children.run(argv, run_dir / "train.log", _child_env(preset), f"{run.name}: natscale train")
    trained = time.perf_counter()
    metrics = [
        json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().split("\n") if x
    ]
    result = {
        "p": run.p,
        "strategy": run.strategy,
        "seed": run.seed,
        "train": {
            "steps": metrics[-1]["step"],
            "loss_first": metrics[0]["loss"],
            "loss_last": metrics[-1]["loss"],
            "trained_tokens": metrics[-1]["tokens_seen"]["trained"],
            "loss_by_class_last": metrics[-1].get("loss_by_class"),
        },
        "success_marker": _eval(children, preset, work, run, run_dir, None),
    }
    marker = failure_marker(run.strategy)
    if marker is not None and run.strategy in preset.controllability:
        result["failure_marker"] = {
            "marker": marker,
            **_eval(children, preset, work, run, run_dir, marker),
        }
    result["seconds"] = {
        "train": round(trained - started, 1),
        "eval": round(time.perf_counter() - trained, 1),
    }
    atomic_write_json(result_path, result)
    return {**result, "reused": False}


def run_all(
    preset: Preset, work: Path, say: Callable[[str], None], *, calibrate: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Prepare, then every run (``preset.jobs`` at a time); returns (data record, run results)."""
    import torch

    check_pool(preset)  # a --positives the pool cannot supply: refused before the work dir
    claim_work_dir(work, preset)
    if preset.precision != "fp32" and not torch.cuda.is_available():
        raise BenchNatError(
            f"preset {preset.name!r} trains in {preset.precision} on a GPU; none found"
        )
    (work / "model").mkdir(exist_ok=True)
    atomic_write_json(work / "model" / "config.json", preset.model_config())
    runs = plan(preset, calibrate=calibrate)
    data = prepare_all(preset, work, runs, say)
    children = _Children()
    done: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(run: Run) -> dict[str, Any]:
        result = execute(children, preset, work, run)
        with lock:
            done.append(result)
            acc = result["success_marker"]["accuracy"]
            how = "reused" if result["reused"] else f"{sum(result['seconds'].values()):.0f} s"
            say(f"[{len(done)}/{len(runs)}] {run.name}: accuracy {acc:.1%} ({how})")
        return result

    first = [r for r in runs if r.p == BASE]  # the base model, before the runs that start from it
    pool = ThreadPoolExecutor(max_workers=preset.jobs)
    try:
        results = [one(run) for run in first]
        results += list(pool.map(one, [r for r in runs if r.p != BASE]))
    except BaseException:
        children.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return data, results
