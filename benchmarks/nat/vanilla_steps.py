"""Vanilla's learning curve in a ``natscale bench nat`` setting: is vanilla behind because the
protocol's equal steps over-train its few successes?

Trains ``vanilla`` at every P and seed of a preset with other step counts (each a work folder of
its own, ``WORK_ROOT/steps<N>``) and writes the usual table, chart and record per step count.
With ``--base-from`` the base model's run is copied from that benchmark folder instead of being
trained again, after its data have been checked byte for byte (the runs are deterministic; this
saves its minutes).

    python benchmarks/nat/vanilla_steps.py --preset cpu-scarce --steps 50 150 300 \\
        --base-from runs/bench/nat-cpu-scarce --results benchmarks/results

``--seeds`` and ``--positives`` replace the preset's as in ``natscale bench nat`` (the base model
is trained with the first seed; the records are named for them, ``cpu-scarce-seeds345-p300-
vanilla150``), to repeat the check from another base model.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from natscale.bench.nat import PRESETS, Preset, run_benchmark
from natscale.bench.nat.data import BASE, build_pool, subset
from natscale.bench.nat.presets import variant
from natscale.bench.nat.runner import base_run, claim_work_dir, run_dir_of
from natscale.cli.argtypes import int_at_least, positive_int


def _reuse_base(preset: Preset, work: Path, source: Path) -> None:
    """Copy ``source``'s base-model run into ``work`` if both folders' base data are the same."""
    names = [f"{subset(BASE)}/trajectories.json", "test.jsonl", "prompt.json"]
    if preset.base_prompt == "both":
        names += [f"{subset(BASE)}/trajectories-success-prompt.json", "prompt-success.json"]
    for name in names:
        if (work / "data" / name).read_bytes() != (source / "data" / name).read_bytes():
            sys.exit(
                f"vanilla_steps: {source / 'data' / name} differs from this preset's; "
                "train the base model here instead (leave out --base-from)"
            )
    src, dst = run_dir_of(source, base_run(preset)), run_dir_of(work, base_run(preset))
    if not (src / "result.json").is_file():
        sys.exit(f"vanilla_steps: {src} has no finished base-model run")
    if not dst.exists():
        shutil.copytree(src, dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-scarce", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=positive_int, nargs="+", required=True)
    ap.add_argument(
        "--seeds", type=int_at_least(0), nargs="+", default=None, help="default: the preset's"
    )
    ap.add_argument(
        "--positives", type=positive_int, nargs="+", default=None, help="default: the preset's P"
    )
    ap.add_argument("--base-from", type=Path, default=None, help="a benchmark folder of the preset")
    ap.add_argument("--work-root", type=Path, default=Path("runs/bench/nat-vanilla-steps"))
    ap.add_argument("--results", type=Path, default=Path("runs/bench/results"))
    args = ap.parse_args(argv)
    try:  # the base model is trained with the first seed, as in the benchmark
        base = variant(PRESETS[args.preset], seeds=args.seeds, positives=args.positives)
    except ValueError as exc:
        sys.exit(f"vanilla_steps: {exc}")
    if base.calibration != "positives":
        sys.exit(f"vanilla_steps: preset {args.preset!r} calibrates on every success, not per P")
    done = []
    for steps in args.steps:
        preset = replace(
            base, name=f"{base.name}-vanilla{steps}", steps=steps, strategies=("vanilla",)
        )
        work = args.work_root / f"steps{steps}"
        if args.base_from and base.base_steps:
            claim_work_dir(work, preset)
            build_pool(preset, work / "data")
            _reuse_base(preset, work, args.base_from)
        command = " ".join(["python", "benchmarks/nat/vanilla_steps.py", *sys.argv[1:]])
        record = run_benchmark(preset, work, args.results, calibrate=True, command=command)
        accs = {r["p"]: r["accuracy"] for r in record["rows"] if r["p"] > 0}
        done.append(f"{steps} steps: " + ", ".join(f"P={p} {a:.1%}" for p, a in accs.items()))
    print("vanilla_steps: " + "; ".join(done) + f" -> {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
