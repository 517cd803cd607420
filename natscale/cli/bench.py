"""`natscale bench`: throughput of the real trainer against the paper's baseline; sweeps; scaling.

natscale bench throughput --model tiny --data example --seq-len 1024
natscale bench sweep --param micro_batch_rows=1,2,4 --model tiny --data gsm8k
natscale bench project --model llama-3-8b --network h100-ib400 [--calibrate CAL.json]
natscale bench nat [--preset cpu|gpu] [--quick] [--seeds S..] [--positives P..]  # vanilla vs NUT vs NAT

Results go to ``--results DIR`` (default ``runs/bench/results``); the tracked tables in
``benchmarks/results`` change only when that folder is named. Progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from natscale.cli.argtypes import float_in, folder, int_at_least, positive_float, positive_int

RESULTS = Path("runs/bench/results")  # untracked; pass --results benchmarks/results to publish
RESULTS_HELP = (
    "folder for the JSON record and the markdown table (default runs/bench/results; "
    "the tracked tables are benchmarks/results)"
)


class _AttnChoices:
    """The values the run config's ``model.attn_implementation`` accepts, read from its model
    when argparse checks or prints them: importing the run config (pydantic) while the parser is
    built would slow the start of every ``natscale`` command (natscale.cli.main)."""

    @staticmethod
    def _values() -> tuple[str, ...]:
        from typing import get_args

        from natscale.config.run import ModelSection

        return get_args(ModelSection.model_fields["attn_implementation"].annotation)

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())


def _spec_arguments(p: argparse.ArgumentParser) -> None:
    from natscale.bench.presets import DATA_PRESETS, MODEL_NAMES

    p.add_argument("--model", default="tiny", choices=MODEL_NAMES)
    p.add_argument("--data", default="example", choices=list(DATA_PRESETS))
    p.add_argument("--seq-len", type=positive_int, default=1024)
    p.add_argument("--micro-batch-rows", type=positive_int, default=1)
    p.add_argument("--grad-accum", type=positive_int, default=1)
    p.add_argument("--warmup", type=positive_int, default=2, help="optimizer steps not measured")
    p.add_argument("--steps", type=positive_int, default=6, help="measured optimizer steps")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cuda if torch sees a GPU, else cpu; cuda without a GPU is refused",
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--zero-stage", type=int, default=3, choices=[1, 2, 3])
    p.add_argument("--offload", default="none", choices=["none", "optimizer", "optimizer+params"])
    p.add_argument("--no-ac", action="store_true", help="activation checkpointing off")
    p.add_argument("--loss", default="fused", choices=["fused", "logits"])
    p.add_argument(
        "--attn",
        default="auto",
        choices=_AttnChoices(),
        metavar="ATTN",  # argparse would read the choices to build it
        help="model.attn_implementation: %(choices)s (default auto; the baseline runs sdpa)",
    )
    p.add_argument("--world-size", type=positive_int, default=1)
    p.add_argument(
        "--nodes", type=positive_int, default=1, help="no-ssh loopback 'nodes' (deepspeed)"
    )
    p.add_argument("--peak-tflops", type=positive_float, default=None)
    p.add_argument("--baseline-rows", type=positive_int, default=None)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--work-dir", type=folder, default=Path("runs/bench"))
    p.add_argument("--results", type=folder, default=RESULTS, help=RESULTS_HELP)
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help="training runs per side; the ratio is reported as median [min-max] over them "
        "(default 3 for throughput, 1 per sweep point)",
    )
    p.add_argument("--timeout", type=positive_float, default=1800, help="seconds per training run")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run-config override for both sides (dotted key, YAML value), e.g. "
        "deepspeed.overrides.zero_optimization.offload_optimizer.ratio=0.8; repeatable",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from natscale.bench.nat.presets import PRESETS as NAT_PRESETS

    sub = parser.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    _spec_arguments(sub.add_parser("throughput", help="natscale vs baseline on one setup"))
    sweep = sub.add_parser("sweep", help="throughput over values of one spec field + table/PNG")
    _spec_arguments(sweep)
    sweep.add_argument("--param", required=True, help="FIELD=V1,V2,... e.g. micro_batch_rows=1,2")
    sweep.add_argument("--name", default=None, help="sweep name (default: the field)")
    proj = sub.add_parser("project", help="ZeRO-3 scaling projection over 1-64 nodes + PNG")
    proj.add_argument("--model", default="llama-3-8b")
    proj.add_argument("--network", default="h100-ib400")
    proj.add_argument("--calibrate", type=folder, help="a sweep JSON over nodes (CPU loopback)")
    proj.add_argument(
        "--step-s", type=positive_float, help="measured single-node step (else from MFU)"
    )
    proj.add_argument("--assumed-mfu", type=float_in(0.0, 1.0), default=0.40)
    proj.add_argument("--peak-tflops", type=positive_float, default=989.0)
    proj.add_argument("--seq-len", type=positive_int, default=4096)
    proj.add_argument("--micro-batch-rows", type=positive_int, default=1)
    proj.add_argument("--grad-accum", type=positive_int, default=8)
    proj.add_argument(
        "--overlap", type=float_in(0.0, 1.0, low_open=False, high_open=True), default=0.5
    )
    proj.add_argument("--results", type=folder, default=RESULTS, help=RESULTS_HELP)
    nat = sub.add_parser(
        "nat",
        help="vanilla vs NUT vs NAT vs nat-fine: train and evaluate each (docs/nat-benchmark.md)",
    )
    nat.add_argument(
        "--preset",
        choices=[name for name in NAT_PRESETS if name != "quick"],
        default=None,
        help="protocol sizing (default: gpu when torch sees a GPU, else cpu); cpu-warm: the cpu "
        "comparison from a base model trained on other successes first; cpu-systematic: "
        "cpu-warm with failures of one mode per kind and a base that knows both prompts; "
        "cpu-systematic-long: cpu-systematic fine-tuned 450 steps, not 150; cpu-scarce: "
        "cpu-systematic-long at P = 100 and 300",
    )
    nat.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test of the whole pipeline, under 2 minutes (tiny model; accuracies mean nothing)",
    )
    nat.add_argument(
        "--work-dir",
        type=folder,
        default=None,
        help="runs and prepared data (default runs/bench/nat-<preset>); rerun to continue",
    )
    nat.add_argument(
        "--calibrate",
        action="store_true",
        help="only the calibration runs: vanilla on every success of the pool, one per seed "
        "(cpu-scarce: the base model and vanilla at each P, which the comparison reuses); run it "
        "first",
    )
    nat.add_argument(
        "--seeds",
        type=int_at_least(0),
        nargs="+",
        default=None,
        help="other seeds than the preset's, to replicate a comparison (with a base model, the "
        "first seed trains a new one); the preset is renamed, e.g. cpu-scarce-seeds345",
    )
    nat.add_argument(
        "--positives",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="P",
        help="other P (successes kept) than the preset's; the preset is renamed, e.g. ...-p300",
    )
    nat.add_argument("--jobs", type=positive_int, default=None, help="runs at a time")
    nat.add_argument("--results", type=folder, default=RESULTS, help=RESULTS_HELP)


class UsageError(ValueError):
    """Bad command-line input found after parsing (exit 2)."""


def spec_from(args: argparse.Namespace, **changes):
    import torch

    from natscale.bench.runner import BenchSpec

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise UsageError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device "
            f"(torch.version.cuda={torch.version.cuda}); run on a GPU machine or pass --device cpu"
        )
    device = args.device or ("cuda" if cuda else "cpu")
    return BenchSpec(**{**_spec_dict(args, device), **changes})


def _spec_dict(args: argparse.Namespace, device: str) -> dict:
    from natscale.config.loader import parse_override

    return dict(
        model=args.model,
        data=args.data,
        seq_len=args.seq_len,
        micro_batch_rows=args.micro_batch_rows,
        grad_accum=args.grad_accum,
        warmup=args.warmup,
        steps=args.steps,
        device=device,
        precision=args.precision,
        zero_stage=args.zero_stage,
        offload=args.offload,
        activation_checkpointing=not args.no_ac,
        loss=args.loss,
        attn=args.attn,
        world_size=args.world_size,
        nodes=args.nodes,
        peak_tflops=args.peak_tflops,
        baseline_rows=args.baseline_rows,
        extra=dict(parse_override(text) for text in args.overrides),
    )


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def _measure(args: argparse.Namespace, spec, work: Path, *, repeats: int) -> dict:
    from natscale.bench.record import MFU_FORMULA, environment, write_record
    from natscale.bench.runner import throughput

    record = throughput(
        spec,
        work_dir=work,
        with_baseline=not args.no_baseline,
        timeout_s=args.timeout,
        repeats=repeats,
        on_progress=_progress,
    )
    record["environment"] = environment()
    record["mfu_formula"] = MFU_FORMULA
    record["command"] = "natscale " + " ".join(sys.argv[1:])
    record["json"] = str(write_record(record, args.results))
    return record


def run(args: argparse.Namespace) -> int:
    from natscale.bench.runner import BenchError

    try:
        if args.bench_command == "throughput":
            return _throughput(args)
        if args.bench_command == "sweep":
            return _sweep(args)
        if args.bench_command == "nat":
            return _nat(args)
        return _project(args)
    except ValueError as exc:  # bad input (spec, --set, --param, --device): exit 2
        print(f"natscale bench {args.bench_command}: error: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"natscale bench {args.bench_command}: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # bench nat: a step failed (the message names its log)
        from natscale.bench.nat.data import BenchDataError
        from natscale.bench.nat.runner import BenchNatError

        if not isinstance(exc, BenchNatError | BenchDataError):
            raise
        print(f"natscale bench {args.bench_command}: error: {exc}", file=sys.stderr)
        return 1


def _throughput(args: argparse.Namespace) -> int:
    from natscale.bench.record import MFU_FORMULA, summary_line

    spec = spec_from(args)
    repeats = 3 if args.repeats is None else args.repeats
    record = _measure(args, spec, args.work_dir / "throughput", repeats=repeats)
    print(MFU_FORMULA)
    print(f"record: {record['json']}")
    print(summary_line(record))
    return 0


def _parse_param(text: str) -> tuple[str, list]:
    from dataclasses import fields

    import yaml

    from natscale.bench.runner import BenchSpec

    key, sep, values = text.partition("=")
    if not sep or not values:
        raise ValueError(f"--param {text!r}: expected FIELD=V1,V2,...")
    key = key.strip().replace("-", "_")
    names = [f.name for f in fields(BenchSpec) if f.name not in ("extra", "device")]
    if key not in names:
        raise ValueError(f"--param {text!r}: unknown field {key!r}; one of {', '.join(names)}")
    probe = argparse.ArgumentParser(add_help=False)
    _spec_arguments(probe)
    action = next((a for a in probe._actions if a.dest == key), None)
    return key, [_param_value(key, v.strip(), action, yaml) for v in values.split(",")]


def _param_value(key: str, raw: str, action: argparse.Action | None, yaml) -> object:
    """One ``--param`` value, checked with the type and choices of the option of the same name
    (``--micro-batch-rows`` for micro_batch_rows...); UsageError naming it when it is bad."""
    bad = f"--param {key}={raw}"
    if action is None:  # no option of that name: activation_checkpointing (bool), seed (int)
        value = yaml.safe_load(raw) if raw else None
        want = bool if key == "activation_checkpointing" else int
        if type(value) is not want:
            raise UsageError(f"{bad}: expected {'true or false' if want is bool else 'an integer'}")
        return value
    try:
        value = action.type(raw) if callable(action.type) else raw
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise UsageError(f"{bad}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise UsageError(f"{bad}: not one of {choices}")
    return value


def _sweep(args: argparse.Namespace) -> int:
    from natscale.bench.sweep import collect, plot_sweep, write_sweep

    key, values = _parse_param(args.param)
    name = args.name or key
    repeats = 1 if args.repeats is None else args.repeats
    specs = []
    for v in values:  # every value checked before the first run
        changes = {key: v}
        if key == "nodes":
            changes["world_size"] = v * max(1, args.world_size // max(args.nodes, 1))
        specs.append((v, spec_from(args, **changes)))
    records = []
    for i, (v, spec) in enumerate(specs, 1):
        _progress(f"sweep {name}: point {i}/{len(specs)}: {key}={v}")
        work = args.work_dir / f"sweep_{name}" / f"{key}_{v}"
        records.append(_measure(args, spec, work, repeats=repeats))
        print(f"sweep {name}: {key}={v} done", flush=True)
    table = collect(records, key)
    paths = write_sweep(table, records, args.results, name=name)
    plot_sweep(table, key, paths["png"])
    print(table["markdown"])
    print(f"sweep {name}: {len(records)} runs -> {paths['md']}, {paths['png']}")
    return 0


def _project(args: argparse.Namespace) -> int:
    from natscale.bench.sweep import projection

    out = projection(args)
    print(out["markdown"])
    print(f"bench project: {out['label']} on {out['network']} -> {out['json']}, {out['png']}")
    return 0


def _nat(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from natscale.bench.nat import PRESETS, run_benchmark
    from natscale.bench.nat.presets import variant

    name = "quick" if args.quick else args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    if args.quick and args.preset:
        raise UsageError("--quick is its own preset; give --quick or --preset, not both")
    preset = variant(PRESETS[name], seeds=args.seeds, positives=args.positives)
    name = preset.name
    if args.jobs:
        preset = replace(preset, jobs=args.jobs)
    work = args.work_dir or Path("runs/bench") / f"nat-{name}"
    record = run_benchmark(preset, work, args.results, calibrate=args.calibrate, say=_progress)
    print(Path(record["paths"]["md"]).read_text())
    from natscale.bench.nat.report import p_label

    cells = []
    for p in dict.fromkeys(r["p"] for r in record["rows"]):
        accs = [
            f"{r['strategy']} {100 * r['accuracy']:.1f}%"
            for r in record["rows"]
            if r["p"] == p and r["marker"] == "success"
        ]
        cells.append(f"{p_label(p).replace(' ', '')}: " + ", ".join(accs))
    reused = sum(r["reused"] for r in record["runs"])
    verdict = f" ({record['calibration']})" if record.get("calibration") else ""
    print(
        f"bench nat: preset {name}, {len(record['runs'])} runs ({reused} reused) in "
        f"{record['elapsed_s'] / 60:.1f} min; "
        + "; ".join(cells)
        + verdict
        + f" -> {record['paths']['md']}"
    )
    return 0
