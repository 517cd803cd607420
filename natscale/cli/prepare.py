"""`natscale prepare CONFIG`: trajectories -> NAT-marked, loss-masked, packed dataset on disk."""

from __future__ import annotations

import argparse
import sys

from natscale.cli.argtypes import path_text, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="prepare config YAML (see examples/configs/prepare_math.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set pack.max_seq_len=2048 (repeatable)",
    )
    parser.add_argument("--out", type=path_text, help="output directory (overrides `output:`)")
    parser.add_argument("--num-proc", type=positive_int, help="tokenisation worker processes")
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="read only the first N trajectories: try a config, then `natscale inspect` the output",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from natscale.cli.interrupt import run_interruptible

    return run_interruptible("prepare", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from natscale.config.loader import ConfigError, load_config
    from natscale.config.prepare import PrepareConfig
    from natscale.data.errors import DataError
    from natscale.data.prepare import prepare

    overrides = list(args.overrides)
    if args.num_proc is not None:
        overrides.append(f"num_proc={args.num_proc}")
    if args.overwrite:
        overrides.append("overwrite=true")
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    try:
        config = load_config(args.config, PrepareConfig, overrides)
        result = prepare(
            config,
            args.out,
            progress=not args.no_progress,
            on_stage=lambda msg: print(f"prepare: {msg}", file=sys.stderr),
            inputs=[args.config],
        )
    except (ConfigError, DataError, OSError, TypeError, ValueError) as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2  # bad input (config, data, paths): the one exit code every command uses
    print(summary(result.stats, result.out_dir))
    return 0


def summary(stats: dict, out_dir) -> str:
    """The one-line summary printed at the end."""
    pk, tot = stats["packing"], stats["total"]
    classes = ", ".join(f"{n} {c['examples']}" for n, c in stats["per_class"].items())
    skipped = sum(stats["skipped"].values())
    dropped = sum(stats["dropped"].values())
    return (
        f"prepare: {stats['trajectories']['loaded']} trajectories -> {tot['examples']} examples "
        f"({classes}), {tot['tokens']} tokens ({tot['trained_tokens']} trained) in {pk['rows']} "
        f"rows of {pk['max_seq_len']} (lower bound {pk.get('lower_bound', '?')}), "
        f"packing {pk['efficiency']:.2%}; skipped {skipped}, "
        f"truncated {stats['truncated']['examples']}, dropped {dropped}; "
        f"{stats.get('elapsed_s', 0):.1f}s -> {out_dir}"
    )
