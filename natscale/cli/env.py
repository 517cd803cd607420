"""`natscale env`: versions, devices, DeepSpeed backend and natscale ops."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--build-ops",
        action="store_true",
        help="first compile the ops a training run would JIT-build on first use (natscale's "
        "segment loss, DeepSpeed's CPU shm all-reduce) into $TORCH_EXTENSIONS_DIR; "
        "`make install` runs this",
    )


def run(args: argparse.Namespace) -> int:
    from natscale.env import collect, format_text

    if args.build_ops:
        from natscale.ops.first_build import build_ahead

        for line in build_ahead():
            print(f"env --build-ops: {line}", file=sys.stderr, flush=True)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print(format_text(info))
        t, ds = info["torch"], info["deepspeed"]
        print(
            f"env: torch {t.get('version')}, deepspeed {info['packages']['deepspeed']} on "
            f"{ds.get('accelerator', '?')}/{ds.get('communication_backend', '?')}, "
            f"{len(t.get('gpus', []))} GPU(s)"
        )
    return 0
