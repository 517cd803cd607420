"""One throughput measurement: natscale and the baseline, each a real ``natscale train`` run.

Both runs use the same model preset, the same examples, device and world size, for
``warmup + steps`` optimizer steps without checkpoints or export; the first ``warmup`` steps of
``metrics.jsonl`` are dropped and the rest summarised (``summarize``).

- natscale: packed rows, ``model.loss=fused`` (the segment loss op), attention ``auto``;
- baseline, the NAT paper's recipe (a plain HF Trainer; docs/benchmarks.md): the same segments
  unpacked, one per row, each micro-batch padded to its longest row, ``model.loss=logits`` (the
  HF lm_head materialises fp32 [T, V] logits, then cross-entropy), sdpa attention (dense causal
  over padded rows). The paper averages the loss per micro-batch; the trainer normalises over the
  step. That changes a scalar factor of the gradient, not the work, so throughput is unaffected.
  Its micro-batch holds as many examples as natscale's on average (``baseline_rows``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from natscale.bench.launch import run_train
from natscale.bench.presets import data_preset_info, model_config, write_model_config
from natscale.checkpoint.layout import RunDir
from natscale.config.loader import set_dotted

OFFLOAD = ("none", "optimizer", "optimizer+params")


class BenchError(RuntimeError):
    """A benchmark run failed; the message holds the command and the log tail."""


@dataclass(frozen=True)
class BenchSpec:
    """What to measure; every field is recorded with the result."""

    model: str = "tiny"
    data: str = "example"
    seq_len: int = 1024
    micro_batch_rows: int = 1
    grad_accum: int = 1
    warmup: int = 2
    steps: int = 6
    device: str = "cpu"  # cpu | cuda: picks the ds_config and precision defaults
    precision: str | None = None  # default: fp32 on cpu, bf16 on cuda
    zero_stage: int = 3
    offload: str = "none"
    activation_checkpointing: bool = True
    loss: str = "fused"
    attn: str = "auto"
    world_size: int = 1
    nodes: int = 1
    peak_tflops: float | None = None
    seed: int = 0
    baseline_rows: int | None = None  # default: natscale's examples per micro-batch
    extra: dict[str, Any] = field(default_factory=dict)  # more --set overrides, dotted keys

    def __post_init__(self) -> None:
        if self.offload not in OFFLOAD:
            raise ValueError(f"offload must be one of {OFFLOAD}, got {self.offload!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.warmup < 1 or self.steps < 1:
            raise ValueError("warmup and steps must be at least 1")
        if self.nodes < 1 or self.world_size % self.nodes:
            raise ValueError(
                f"world size {self.world_size} is not a multiple of {self.nodes} node(s): every "
                "node runs world_size / nodes ranks (--world-size / --nodes)"
            )
        if self.extra:
            self._check_extra()

    def _check_extra(self) -> None:
        """Refuse a bad ``--set`` now, not after the data and the first run (a minute in)."""
        from pydantic import ValidationError

        from natscale.config.loader import format_validation_error
        from natscale.config.run import RunConfig

        cfg = run_config(
            self,
            data_dir=Path("DATA"),
            model_cfg=Path("MODEL"),
            out=Path("OUT"),
            baseline=False,
            rows=1,
        )
        try:
            RunConfig.model_validate(cfg)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, "--set", set(self.extra), cfg)) from None

    @property
    def rows_needed(self) -> int:
        return (
            (self.warmup + self.steps) * self.world_size * self.grad_accum * self.micro_batch_rows
        )


def run_config(
    spec: BenchSpec, *, data_dir: Path, model_cfg: Path, out: Path, baseline: bool, rows: int
) -> dict[str, Any]:
    """The ``natscale train`` run config of one side of the comparison."""
    cpu = spec.device == "cpu"
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if spec.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not cpu}
    if spec.offload == "optimizer+params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": not cpu}
    cfg: dict[str, Any] = {
        "output_dir": str(out),
        "model": {
            "config": str(model_cfg),
            "attn_implementation": "sdpa" if baseline else spec.attn,
            "activation_checkpointing": spec.activation_checkpointing,
            "loss": "logits" if baseline else spec.loss,
        },
        "data": {"path": str(data_dir), "shuffle": True, "micro_batch_rows": rows},
        "train": {
            "seed": spec.seed,
            "precision": spec.precision or ("fp32" if cpu else "bf16"),
            "steps": spec.warmup + spec.steps,
            "grad_accum": spec.grad_accum,
            "lr": 1e-5,
            "lr_schedule": "constant",
        },
        "deepspeed": {
            "config": "ds_configs/zero3_cpu.json" if cpu else "ds_configs/zero3_bf16.json",
            "overrides": {"zero_optimization": zero},
        },
        "checkpoint": {"at_end": False, "export_hf": False},
        "logging": {"tensorboard": False, "progress_bar": False, "peak_tflops": spec.peak_tflops},
    }
    for key, value in spec.extra.items():
        set_dotted(cfg, key, value)
    return cfg


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def summarize(records: list[dict[str, Any]], *, warmup: int, world_size: int) -> dict[str, Any]:
    """Measured-window statistics of ``metrics.jsonl`` records (steps after ``warmup``)."""
    measured = [r for r in records if r["step"] > warmup]
    if not measured:
        raise BenchError(f"no measured steps: {len(records)} records, warm-up {warmup}")
    times = [r["step_time_s"] for r in measured]
    total = sum(times)
    tokens = {k: sum(r["tokens"][k] for r in measured) for k in ("slot", "nonpad", "trained")}
    flops = sum(r["tflops_per_gpu"] * 1e12 * r["step_time_s"] * world_size for r in measured)
    mfus = [r["mfu"] for r in measured]
    memory: dict[str, float] = {}
    for r in measured:
        for k, v in (r.get("memory") or {}).items():
            memory[k] = max(memory.get(k, 0.0), v)
    return {
        "measured_steps": len(measured),
        "step_time_s": {
            "median": float(np.median(times)),
            "p10": _percentile(times, 10),
            "p90": _percentile(times, 90),
        },
        "tokens_per_step": {k: v / len(measured) for k, v in tokens.items()},
        "tokens_per_s_per_gpu": {k: v / total / world_size for k, v in tokens.items()},
        "tflops_per_gpu": flops / total / world_size / 1e12,
        "mfu": None
        if None in mfus
        else sum(m * t for m, t in zip(mfus, times, strict=True)) / total,
        "peak_memory_gib": memory,
        "data_wait_share": sum(r["data_time_s"] for r in measured) / total,
        "packing_efficiency": tokens["nonpad"] / tokens["slot"],
        "final_loss": measured[-1]["loss"],
    }


def run_side(
    spec: BenchSpec,
    *,
    data_dir: Path,
    model_cfg: Path,
    work: Path,
    baseline: bool,
    rows: int,
    timeout_s: float,
) -> dict[str, Any]:
    """One ``natscale train`` job and its summarised metrics."""
    from natscale.train.metrics import read_metrics

    name = "baseline" if baseline else "natscale"
    out = work / name
    cfg = run_config(
        spec, data_dir=data_dir, model_cfg=model_cfg, out=out, baseline=baseline, rows=rows
    )
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    started = time.time()
    code, tail, cmds = run_train(
        cfg_path,
        world_size=spec.world_size,
        nodes=spec.nodes,
        log_dir=work / f"{name}_logs",
        timeout_s=timeout_s,
        device=spec.device,
    )
    if code != 0:
        raise BenchError(f"{name} run failed (exit {code}): {' '.join(cmds[0])}\n{tail}")
    run_dir = RunDir(out)
    summary = json.loads(run_dir.summary.read_text(encoding="utf-8"))
    metrics = summarize(read_metrics(out), warmup=spec.warmup, world_size=spec.world_size)
    return {
        "commands": [" ".join(c) for c in cmds],
        "wall_s": time.time() - started,
        "device": summary["device"],
        "attn_implementation": summary["attn_implementation"],
        "loss_implementation": summary.get("loss_implementation"),
        "loss": cfg["model"]["loss"],
        "micro_batch_rows": rows,
        "config": yaml.safe_load(run_dir.config.read_text(encoding="utf-8")),
        "ds_config": json.loads(run_dir.ds_config.read_text(encoding="utf-8")),
        **metrics,
    }


def ratios(nat: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out = {
        f"tokens_per_s_{k}": div(v, base["tokens_per_s_per_gpu"][k])
        for k, v in nat["tokens_per_s_per_gpu"].items()
    }
    out["step_time_median"] = div(nat["step_time_s"]["median"], base["step_time_s"]["median"])
    return out


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value of a repeated measurement."""
    return {
        "median": float(np.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
        "values": [float(v) for v in values],
    }


def _brief(side: dict[str, Any]) -> dict[str, Any]:
    """What a repeat keeps of one side: its rates and step times (the full run is in the record)."""
    keys = ("wall_s", "step_time_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "final_loss")
    return {k: side[k] for k in keys}


def _median_pick(values: list[float]) -> int:
    """Index of the median value (the lower middle for an even count)."""
    return int(np.argsort(values)[(len(values) - 1) // 2])


def _prepare_sides(
    spec: BenchSpec, work_dir: Path, with_baseline: bool, say: Callable[[str], None]
) -> tuple[Path, list[tuple[str, bool, Path, int]]]:
    """Build the data and model config; (model config, [(name, baseline, data, rows), ...])."""
    from natscale.bench.datasets import build_datasets, mean_segments_per_row

    vocab = int(model_config(spec.model)["vocab_size"])
    say(f"preparing the {spec.data} data ({spec.seq_len}-token rows) and the {spec.model} model")
    packed, unpacked = build_datasets(
        spec.data,
        seq_len=spec.seq_len,
        vocab=vocab,
        min_rows=max(spec.rows_needed, 16),
        seed=spec.seed,
        cache_dir=work_dir / "data",
    )
    model_cfg = write_model_config(spec.model, work_dir / "model")
    sides = [("natscale", False, packed, spec.micro_batch_rows)]
    if with_baseline:
        per_row = mean_segments_per_row(packed)
        rows = spec.baseline_rows or max(1, round(per_row * spec.micro_batch_rows))
        sides.append(("baseline", True, unpacked, rows))
    return model_cfg, sides


def _run_repeats(
    spec: BenchSpec,
    sides: list[tuple[str, bool, Path, int]],
    *,
    work_dir: Path,
    model_cfg: Path,
    repeats: int,
    timeout_s: float,
    say: Callable[[str], None],
) -> list[dict[str, dict[str, Any]]]:
    """Every side ``repeats`` times, alternating; one {side name: result} per repeat."""
    total = repeats * len(sides)
    runs: list[dict[str, dict[str, Any]]] = []
    for i in range(repeats):
        work = work_dir if repeats == 1 else work_dir / f"repeat{i + 1}"
        work.mkdir(parents=True, exist_ok=True)
        runs.append({})
        for name, baseline, data_dir, rows in sides:
            n = i * len(sides) + len(runs[-1]) + 1
            say(
                f"run {n}/{total}: {name}, repeat {i + 1}/{repeats} "
                f"({spec.warmup}+{spec.steps} steps on {spec.world_size} rank(s))"
            )
            res = run_side(
                spec,
                data_dir=data_dir,
                model_cfg=model_cfg,
                work=work,
                baseline=baseline,
                rows=rows,
                timeout_s=timeout_s,
            )
            runs[-1][name] = res
            say(
                f"run {n}/{total}: {name} done in {res['wall_s']:.0f} s: step "
                f"{res['step_time_s']['median']:.3f} s, "
                f"{res['tokens_per_s_per_gpu']['trained']:,.0f} trained tok/s/device"
            )
    return runs


def _add_natscale_only(record: dict[str, Any], runs: list[dict[str, dict[str, Any]]]) -> None:
    """Without a baseline: the median natscale run, and each repeat's numbers if several."""
    rates = [r["natscale"]["tokens_per_s_per_gpu"]["trained"] for r in runs]
    record["natscale"] = runs[_median_pick(rates)]["natscale"]
    if len(runs) > 1:
        record["repeats"] = [{"natscale": _brief(r["natscale"])} for r in runs]
        record["natscale_trained_tok_s_spread"] = spread(rates)


def _add_comparison(record: dict[str, Any], runs: list[dict[str, dict[str, Any]]]) -> None:
    """The median-ratio pair, the median of each ratio, its spread and every repeat."""
    each = [ratios(r["natscale"], r["baseline"]) for r in runs]
    pick = _median_pick([r["tokens_per_s_trained"] for r in each])
    record["natscale"] = runs[pick]["natscale"]
    record["baseline"] = runs[pick]["baseline"]
    record["ratio"] = {
        k: (None if any(r[k] is None for r in each) else float(np.median([r[k] for r in each])))
        for k in each[0]
    }
    record["ratio_spread"] = {
        k: spread([r[k] for r in each]) for k in each[0] if all(r[k] is not None for r in each)
    }
    record["repeats"] = [
        {"natscale": _brief(r["natscale"]), "baseline": _brief(r["baseline"]), "ratio": rt}
        for r, rt in zip(runs, each, strict=True)
    ]


def invocation_dir(work_dir: Path) -> Path:
    """A new folder for this invocation's training runs, ``WORK/runs/<UTC time>``: a rerun never
    meets (nor removes) an earlier one's run directories; the prepared data above are shared."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 1000):
        folder = work_dir / "runs" / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise BenchError(f"{work_dir / 'runs'}: no free folder for {stamp}")


def throughput(
    spec: BenchSpec,
    *,
    work_dir: Path,
    with_baseline: bool = True,
    timeout_s: float = 1800,
    repeats: int = 1,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure natscale (and the baseline) for ``spec``; returns the record (not yet written).

    With ``repeats`` > 1 the two sides run alternately ``repeats`` times each (natscale, baseline,
    natscale, ...), so drift in the machine's load hits both alike; ``record["natscale"]`` and
    ``record["baseline"]`` are the pair whose trained-token ratio is the median (the lower middle
    for an even count), ``record["ratio"]`` holds the median of each ratio over the repeats, and
    ``record["ratio_spread"]`` / ``record["repeats"]`` every repeat's numbers. ``on_progress``
    gets one line before and after each training run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    say = on_progress or (lambda line: None)
    work_dir.mkdir(parents=True, exist_ok=True)
    model_cfg, sides = _prepare_sides(spec, work_dir, with_baseline, say)
    runs = _run_repeats(
        spec,
        sides,
        work_dir=invocation_dir(work_dir),
        model_cfg=model_cfg,
        repeats=repeats,
        timeout_s=timeout_s,
        say=say,
    )
    record: dict[str, Any] = {"spec": asdict(spec), "data_preset": data_preset_info(spec.data)}
    if with_baseline:
        _add_comparison(record, runs)
    else:
        _add_natscale_only(record, runs)
    return record
