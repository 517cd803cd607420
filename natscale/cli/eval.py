"""`natscale eval CONFIG [--data PREPARED] [--set K=V] [--resume]`: run the agent, score it.

`natscale eval compare RUN... [--plot PNG]` prints one markdown table of several evaluations, each
compared with the first question by question.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING, Any

from natscale.cli.argtypes import path_text

if TYPE_CHECKING:
    from natscale.config.eval import EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        nargs="*",
        metavar="CONFIG | compare RUN...",
        help="eval config YAML, or `compare` followed by eval output directories",
    )
    parser.add_argument(
        "--data",
        metavar="PREPARED_DIR",
        help="reuse the prompt wording a `natscale prepare` output was made with",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set sampling.n=4 (repeatable)",
    )
    parser.add_argument("--out", type=path_text, help="output directory (overrides `output:`)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the eval already in the output directory"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="compare: also draw the runs' metric and their differences with the first run",
    )


def _fail(message: str, code: int = 2) -> int:
    print(f"natscale eval: error: {message}", file=sys.stderr, flush=True)
    return code


def load_eval_config(path: str, overrides: list[str], data_dir: str | None):
    """The config: ``--data`` prompt defaults, under the YAML file, under ``--set``."""
    from pydantic import ValidationError

    from natscale.config.eval import EvalConfig
    from natscale.config.loader import (
        ConfigError,
        apply_overrides,
        format_validation_error,
        parse_override,
        read_yaml,
    )
    from natscale.eval.prepared import agent_defaults, prompt_defaults

    data = read_yaml(path)
    if data_dir:
        user_prompt = data.get("prompt") or {}
        if not isinstance(user_prompt, dict):
            raise ConfigError(f"{path}: prompt must be a mapping")
        file_given = "file" in user_prompt or any(
            parse_override(o)[0] == "prompt.file" for o in overrides
        )
        base = prompt_defaults(data_dir, file_given=file_given)
        data["prompt"] = {**base, **user_prompt}
        for section, values in agent_defaults(data_dir).items():
            given = data.get(section) or {}
            if not isinstance(given, dict):
                raise ConfigError(f"{path}: {section} must be a mapping")
            data[section] = {**values, **given}
    apply_overrides(data, overrides)
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as exc:
        overridden = {parse_override(o)[0] for o in overrides}
        raise ConfigError(format_validation_error(exc, str(path), overridden, data)) from exc


def _compare(runs: list[str], plot: str | None) -> int:
    """``natscale eval compare RUN... [--plot PNG]``: one markdown table of the evaluations."""
    from pathlib import Path

    from natscale.eval.compare import compare
    from natscale.eval.errors import EvalError

    if not runs:
        return _fail("compare needs at least one eval output directory")
    if plot is not None and Path(plot).suffix.lower() != ".png":
        return _fail(f"--plot {plot}: the chart is a PNG; give a path ending in .png")
    try:
        table, line = compare(runs, plot)
    except EvalError as exc:
        return _fail(str(exc))
    print(table)
    print(line, file=sys.stderr)
    return 0


def _evaluate(cfg: EvalConfig, args: argparse.Namespace) -> int:
    """Run the evaluation, a SIGTERM asking it to stop at the next episode boundary."""
    from natscale.eval.backends.openai import EndpointError
    from natscale.eval.errors import EvalError
    from natscale.eval.run import run_eval

    if args.no_progress:  # the libraries' bars too (transformers' "Loading weights")
        from natscale.cli.train import no_library_progress_bars

        no_library_progress_bars()
    dist = _maybe_distributed()
    stopped: list[int] = []

    def on_term(signum, _frame) -> None:
        stopped.append(signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        summary = run_eval(
            cfg,
            args.out,
            resume=args.resume,
            should_stop=lambda: bool(stopped),
            progress=not args.no_progress,
            dist=dist,
            inputs=[args.data] if args.data else (),
        )
    except EvalError as exc:
        return _fail(str(exc))
    except EndpointError as exc:
        return _fail(f"{exc}; the episodes so far are kept: rerun with --resume", 1)
    except KeyboardInterrupt:
        print("natscale eval: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if summary is not None:  # None on a rank other than 0: rank 0 merged and reports
        _report(summary, stopped=bool(stopped))
    return 0


def _report(summary: dict[str, Any], *, stopped: bool) -> None:
    from natscale.eval.run import summary_line

    if stopped:
        print(
            f"natscale eval: stopped by SIGTERM after {summary['episodes']} of "
            f"{summary['expected_episodes']} episodes; rerun with --resume to continue",
            file=sys.stderr,
            flush=True,
        )
    print(summary_line(summary), flush=True)


def run(args: argparse.Namespace) -> int:
    from natscale.config.loader import ConfigError
    from natscale.eval.errors import EvalError

    if args.target and args.target[0] == "compare":
        return _compare(args.target[1:], args.plot)
    if args.plot is not None:
        return _fail("--plot is for `natscale eval compare RUN...`")
    if len(args.target) != 1:
        return _fail("give one config: natscale eval CONFIG (or: natscale eval compare RUN...)")
    try:
        cfg = load_eval_config(args.target[0], args.overrides, args.data)
    except (ConfigError, EvalError) as exc:
        return _fail(str(exc))
    return _evaluate(cfg, args)


def _maybe_distributed():
    """``torch.distributed`` when started as one of several ranks (torchrun, deepspeed, mpirun,
    srun), initialised; None for a single process."""
    import os

    from natscale.train.dist import map_rank_env

    env = dict(os.environ)
    map_rank_env(env)
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    from natscale.train.dist import init_distributed

    init_distributed()
    return dist
