"""`natscale plot RUN_DIR`: PNG curves of a training run (loss by class, throughput)."""

from __future__ import annotations

import argparse
import sys

from natscale.cli.argtypes import path_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", type=path_text, help="a `natscale train` output_dir"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=path_text,
        help="where to write PNGs (default RUN_DIR/plots); a loss.png or throughput.png "
        "there that natscale plot did not write is never replaced",
    )


def run(args: argparse.Namespace) -> int:
    from natscale.train.plot import plot_run

    try:
        paths = plot_run(args.run_dir, args.out)
    except (OSError, ValueError) as exc:
        print(f"natscale plot: error: {exc}", file=sys.stderr)
        return 2
    print(f"plot: wrote {', '.join(str(p) for p in paths)}")
    return 0
