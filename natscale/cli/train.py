"""`natscale train CONFIG`: one rank of a DeepSpeed ZeRO-3 training job (or a job of one).

Works alone or under torchrun / deepspeed / mpirun / srun, including
``deepspeed [launcher args] --module natscale.cli train --config CONFIG``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from natscale.train.args import TrainArgs

if TYPE_CHECKING:
    from natscale.config.run import RunConfig
    from natscale.train.dist import DistInfo
    from natscale.train.preflight import Preflight
    from natscale.train.trainer import StopSignal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config_pos", nargs="?", metavar="CONFIG", help="run config YAML")
    parser.add_argument("--config", dest="config_opt", metavar="CONFIG", help="same as CONFIG")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=2e-5 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from output_dir/checkpoints/latest, checked first (when latest names a "
        "folder that is gone: from the newest complete checkpoint; when there is no checkpoint "
        "at all: from step 1)",
    )
    parser.add_argument(
        "--resume-from",
        metavar="TAG",
        help="continue from this checkpoint tag, e.g. global_step40 (implies --resume)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start at step 1 even though output_dir holds a previous run: its files are moved "
        "to output_dir/previous-<time>/ first (nothing is deleted)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (the same as --set logging.progress_bar=false)",
    )
    # the deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


NO_PROGRESS = ["logging.progress_bar=false"]  # what --no-progress sets


def config_given_twice(args: argparse.Namespace) -> bool:
    """CONFIG and --config name different files."""
    return bool(args.config_pos and args.config_opt and args.config_pos != args.config_opt)


def train_args(args: argparse.Namespace) -> TrainArgs:
    """The parsed command line as the library takes it (check ``config_given_twice`` first)."""
    return TrainArgs(
        config=args.config_opt or args.config_pos,
        overrides=list(args.overrides) + NO_PROGRESS * bool(getattr(args, "no_progress", False)),
        resume=args.resume,
        resume_from=args.resume_from,
        fresh=args.fresh,
    )


def _fail(message: str, code: int) -> int:
    print(f"natscale train: error: {message}", file=sys.stderr, flush=True)
    return code


def _load_run(args: argparse.Namespace) -> tuple[TrainArgs, RunConfig, Preflight] | int:
    """(train args, run config, preflight checks), or the exit code of a bad command line."""
    from natscale.config.loader import ConfigError, load_config
    from natscale.config.run import RunConfig
    from natscale.train.preflight import PreflightError, check_config_location, check_run

    if config_given_twice(args):
        return _fail("give the config once (positionally or with --config)", 2)
    targs = train_args(args)
    if not targs.config:
        return _fail("no run config: natscale train CONFIG (or --config CONFIG)", 2)
    try:
        run_cfg = load_config(targs.config, RunConfig, targs.overrides)
        check_config_location(targs.config, run_cfg)
        checks = check_run(
            run_cfg, resume=targs.resume, fresh=targs.fresh, resume_from=targs.resume_from
        )
    except (ConfigError, PreflightError) as exc:
        return _fail(str(exc), 2)
    return targs, run_cfg, checks


def _train(
    run_cfg: RunConfig, targs: TrainArgs, checks: Preflight, info: DistInfo, stop: StopSignal
) -> dict[str, Any] | int:
    """This rank's training run: its summary, or the exit code of a failed run."""
    from natscale.checkpoint.resume import ResumeError
    from natscale.checkpoint.safety import UnsafeCheckpointError
    from natscale.checkpoint.universal import UniversalConversionError
    from natscale.config.loader import ConfigError
    from natscale.data.schema import RowError
    from natscale.train.trainer import Trainer, TrainingAborted

    try:
        trainer = Trainer(
            run_cfg,
            info,
            checks,
            resume=targs.resuming,
            fresh=targs.fresh,
            resume_from=targs.resume_from,
        )
        return trainer.train(stop)
    except TrainingAborted as exc:
        if info.rank == 0 and exc.summary is not None:
            try:
                _write_summary(run_cfg.output_dir, exc.summary)
            except OSError as write_exc:  # e.g. the disk that is full
                print(f"natscale train: cannot write summary.json: {write_exc}", file=sys.stderr)
        return _fail(str(exc), 1)
    except (
        RowError,
        UniversalConversionError,
        UnsafeCheckpointError,
        ResumeError,
        ConfigError,
    ) as exc:  # ConfigError: e.g. deepspeed.config deleted since the checks
        return _fail(str(exc), 2)
    except KeyboardInterrupt:  # a second Ctrl-C (natscale.train.trainer.StopSignal)
        return _fail(
            "interrupted (Ctrl-C twice): stopped without saving; --resume continues from the "
            "last checkpoint in checkpoints/latest, if any",
            130,
        )


def run(args: argparse.Namespace) -> int:
    loaded = _load_run(args)
    if isinstance(loaded, int):
        return loaded
    targs, run_cfg, checks = loaded
    _quiet_libraries()
    if not run_cfg.logging.progress_bar:
        no_library_progress_bars()

    import torch.distributed as dist

    from natscale.train.dist import init_distributed
    from natscale.train.engine import export_local_size
    from natscale.train.trainer import StopSignal

    stop = StopSignal()  # from here on SIGTERM/SIGINT mean: checkpoint at the next step boundary
    export_local_size()
    info = init_distributed()
    if info.rank == 0:
        for note in checks.notes:
            print(f"natscale train: note: {note}", file=sys.stderr, flush=True)
    summary = _train(run_cfg, targs, checks, info, stop)
    if isinstance(summary, int):
        return summary
    export_missing = False
    if info.rank == 0 and summary.get("status") == "nothing_to_do":
        export_missing = _hf_export_missing(run_cfg, summary)
        print(
            f"natscale train: nothing to do, already at step {summary['steps']}/"
            f"{summary['total_steps']}"
            + (
                f" (train.stop_after_steps={run_cfg.train.stop_after_steps})"
                if summary["last_stop"] < summary["total_steps"]
                else ""
            )
            + f" in {summary['checkpoint']}; "
            + (
                "hf/ is missing (the run stopped before its export): writing it from that "
                "checkpoint; summary.json is left as it is"
                if export_missing
                else "summary.json and hf/ are left as they are. To train further, raise "
                "train.steps (or train.stop_after_steps)"
            ),
            file=sys.stderr,
            flush=True,
        )
    elif info.rank == 0:
        _write_summary(run_cfg.output_dir, summary)
        print(summary_line(summary), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    if export_missing:  # rank 0 alone, with no peer left waiting on a collective
        return _export_from_checkpoint(run_cfg, summary["checkpoint"])
    return 0


def _hf_export_missing(run_cfg: RunConfig, summary: dict[str, Any]) -> bool:
    """A finished run (its checkpoint at its last step) that exports, without RUN_DIR/hf: one
    that a kill (or, in older versions, a stop signal during the last step) ended before its
    export."""
    from natscale.checkpoint.layout import RunDir

    hf = RunDir(run_cfg.output_dir).hf
    return (
        run_cfg.checkpoint.export_hf
        and summary["steps"] == summary["total_steps"]
        and not (hf.exists() or hf.is_symlink())
    )


def _export_from_checkpoint(run_cfg: RunConfig, checkpoint: str) -> int:
    """Write RUN_DIR/hf from the run's final checkpoint, as `natscale convert zero-to-hf` does
    (never over an existing folder); 1 if it cannot be written."""
    from pathlib import Path

    from natscale.checkpoint.layout import RunDir
    from natscale.checkpoint.safety import UnsafeCheckpointError
    from natscale.checkpoint.zero_to_hf import convert_zero_to_hf
    from natscale.cli.interrupt import run_interruptible
    from natscale.convert.errors import ConvertError

    layout = RunDir(run_cfg.output_dir)
    tag = Path(checkpoint)

    def work() -> int:
        try:
            res = convert_zero_to_hf(
                tag.parent,
                layout.hf,
                tag=tag.name,
                config_dir=layout.model_config,
                progress=run_cfg.logging.progress_bar,
            )
        except (ConvertError, UnsafeCheckpointError, OSError) as exc:
            return _fail(
                f"could not write {layout.hf} from {checkpoint}: {exc}. The checkpoint is "
                f"intact; retry with natscale convert zero-to-hf {tag.parent} {layout.hf} "
                f"--tag {tag.name} --config-dir {layout.model_config}",
                1,
            )
        for note in res.notes:
            print(f"natscale train: note: {note}", file=sys.stderr, flush=True)
        print(f"train: wrote {res.out_dir} from {checkpoint}", flush=True)
        return 0

    return run_interruptible("natscale train", work, what=f"{layout.hf} not written")


def _quiet_libraries() -> None:
    import logging
    import warnings

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # DeepSpeed calls collectives that torch renamed; one warning per call would flood the log
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()


def no_library_progress_bars() -> None:
    """``logging.progress_bar: false`` covers the libraries' bars too (dataset loading, the HF
    export's "Writing model shards"), not only the trainer's."""
    import datasets
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    disable_progress_bars()
    hf_logging.disable_progress_bar()


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None: strict JSON has none."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _write_summary(output_dir: str, summary: dict) -> None:
    from natscale.atomic import atomic_write_json
    from natscale.checkpoint.layout import RunDir

    atomic_write_json(RunDir(output_dir).summary, _finite(summary), allow_nan=False)


def summary_line(s: dict) -> str:
    def num(x: float | None, fmt: str = ".4f") -> str:
        return "n/a" if x is None else format(x, fmt)

    classes = ", ".join(f"{k} {num(v, '.3f')}" for k, v in (s["final_loss_by_class"] or {}).items())
    rates = s["tokens_per_s_per_gpu"]
    speed = (
        f"tok/s/device slot {rates['slot']:,.0f} non-pad {rates['nonpad']:,.0f} "
        f"trained {rates['trained']:,.0f}; {s['tflops_per_gpu']:.3g} TFLOP/s/device"
        if rates is not None and s["tflops_per_gpu"] is not None
        else "tok/s/device n/a"
    )
    mfu = "n/a" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
    where = s["hf_export"] or s["checkpoint"] or "no checkpoint"
    coef = s.get("router_aux_loss_coef")
    router = (
        f"router loss {num(s.get('final_router_aux_loss'), '.3f')} x {coef:g}; " if coef else ""
    )
    return (
        f"train: {s['reason']} at step {s['steps']}/{s['total_steps']} in {s['wall_s']:.1f} s; "
        f"loss {num(s['first_loss'])} -> {num(s['final_loss'])} ({classes}); {router}"
        f"{s['tokens_seen']['trained']:,} trained tokens; {speed}, MFU {mfu} on "
        f"{s['device']}; skipped {s['nonfinite_steps']}; -> {where}"
    )
