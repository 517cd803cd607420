"""`natscale merge OUT PART...`: join the prepare outputs of several nodes into one folder."""

from __future__ import annotations

import argparse
import sys

from natscale.cli.argtypes import path_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=path_text, help="the merged prepared folder to write")
    parser.add_argument(
        "parts",
        nargs="+",
        type=path_text,
        help="`natscale prepare` output folders, in the order of their rows",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output")


def run(args: argparse.Namespace) -> int:
    from natscale.cli.interrupt import run_interruptible

    return run_interruptible("merge", lambda: _run(args), what="nothing written")


def _run(args: argparse.Namespace) -> int:
    from natscale.cli.prepare import summary
    from natscale.data.merge import merge_prepared

    try:
        out, stats = merge_prepared(args.parts, args.out, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:  # MergeError, a refused output folder, a bad part
        print(f"merge: error: {exc}", file=sys.stderr)
        return 2
    line = summary(stats, out).removeprefix("prepare: ")
    n = len(args.parts)
    print(f"merge: {n} prepared folder{'s' if n != 1 else ''}, {line}")
    return 0
