"""`natscale env`: versions, devices, DeepSpeed backend and natscale ops."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from natscale.env import collect, format_text

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
