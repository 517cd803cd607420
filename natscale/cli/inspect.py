"""`natscale inspect DATA`: print prepared examples with the text they train marked."""

from __future__ import annotations

import argparse
import sys

from natscale.cli.argtypes import path_text, positive_int

GREEN, RESET = "\x1b[32m", "\x1b[0m"
OPEN, CLOSE = "⟦", "⟧"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", type=path_text, help="a `natscale prepare` (or `natscale merge`) output folder"
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", metavar="I", help="rows to show (default: from the first)"
    )
    parser.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME",
        help="only examples of this class (success, failure, a nat-fine bucket)",
    )
    parser.add_argument(
        "--limit", type=positive_int, default=2, help="examples to show (default 2)"
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help=f"trained text in green (auto: on a terminal) or between {OPEN} {CLOSE}",
    )


def run(args: argparse.Namespace) -> int:
    from natscale.data.inspect import segments
    from natscale.data.prepared import PreparedDataError, PreparedDir
    from natscale.data.render import load_tokenizer

    prepared = PreparedDir(args.data)
    try:
        rows = prepared.open().with_format("numpy")
        names = prepared.class_names(0)
        tokenizer = load_tokenizer(prepared.tokenizer)
    except (PreparedDataError, OSError, ValueError, TypeError) as exc:
        return _error(str(exc))
    if args.class_name is not None and args.class_name not in names:
        return _error(f"--class {args.class_name}: {args.data} has the classes {names}")
    bad = [r for r in args.rows or () if not 0 <= r < len(rows)]
    if bad:
        return _error(f"--rows {bad[0]}: {args.data} has rows 0..{len(rows) - 1}")
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    before, after = (GREEN, RESET) if color else (OPEN, CLOSE)
    shown = tokens = trained = 0
    seen_rows: set[int] = set()
    only = names.index(args.class_name) if args.class_name is not None else None
    for seg in segments(rows, tokenizer, names, args.rows or range(len(rows)), only=only):
        if shown == args.limit and not args.rows:
            break
        print(
            f"── row {seg.row}, example {seg.index}: {seg.class_name}, weight {seg.weight:g}, "
            f"{seg.tokens} tokens ({seg.trained} trained)"
        )
        print("".join(f"{before}{t}{after}" if on else t for t, on in seg.parts))
        shown, tokens, trained = shown + 1, tokens + seg.tokens, trained + seg.trained
        seen_rows.add(seg.row)
    if not shown:
        return _error(f"no example of class {args.class_name} in {args.data}")
    mark = "in green" if color else f"between {OPEN} {CLOSE}"
    print(
        f"inspect: {shown} example{'s' * (shown != 1)} from {len(seen_rows)} of {len(rows)} "
        f"rows of {args.data}, {tokens} tokens ({trained} trained, {mark})"
    )
    return 0


def _error(message: str) -> int:
    print(f"natscale inspect: error: {message}", file=sys.stderr)
    return 2
