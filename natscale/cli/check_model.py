"""`natscale check-model PATH`: does natscale train this model family exactly? (CPU, seconds)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        metavar="PATH",
        help="a Hugging Face model directory or its config.json (only the config is read)",
    )


def run(args: argparse.Namespace) -> int:
    from natscale.config.run import ModelSection
    from natscale.model.check import ISOLATED, check_model
    from natscale.model.families import CHECKED, PACKING_LEAKS, index_topk
    from natscale.model.load import ModelSourceError, load_hf_config

    try:
        config = load_hf_config(ModelSection(config=args.path))
    except ModelSourceError as exc:
        message = str(exc).removeprefix("model.config: ")
        print(f"natscale check-model: error: {message}", file=sys.stderr)
        return 2
    try:
        r = check_model(config)
    except Exception as exc:  # any family-specific failure to build or run is reported
        print(
            f"natscale check-model: error: {args.path}: a shrunken random copy of this "
            f"{getattr(config, 'model_type', '?')} config could not be built or run "
            f"({type(exc).__name__}: {exc}); the family may name its sizes otherwise",
            file=sys.stderr,
        )
        return 2
    known = (
        "checked by natscale's tests"
        if r.model_type in CHECKED
        else "refused for packed rows by natscale"
        if r.model_type in PACKING_LEAKS
        else "not among the families natscale's tests check"
    )
    print(
        f"{r.model_type} ({r.model_class}, {known}); a random 2-layer copy, {r.attn_implementation}:"
    )
    verdict = "OK" if r.packed_ok else "LEAKS"
    print(
        f"  packed rows: a segment's hidden states vs the same segment alone differ by "
        f"{r.packed_difference:.1e} (the first segment's, the floor: {r.first_difference:.1e}; "
        f"isolated below {ISOLATED:g}): {verdict}"
    )
    verdict = "OK" if r.logits_ok else "DIFFERS"
    print(
        f"  logits: natscale's loss vs F.cross_entropy of the model's own logits differ by "
        f"{r.logits_difference:.1e}: {verdict}"
    )
    if (topk := index_topk(config)) is not None:
        print(
            f"  sparse attention: packed rows are exact only up to index_topk={topk} tokens "
            "(the copy's rows are shorter); `natscale train` checks the data's rows"
        )
    if not r.logits_ok:
        summary = (
            "natscale would train it against other logits than it predicts with: do not train "
            "it (please report the family)"
        )
    elif not r.packed_ok:
        summary = (
            "packed rows mix its segments: train it on rows of one example each "
            "(natscale prepare --set pack.algorithm=none)"
        )
    else:
        summary = "natscale trains it exactly on packed rows"
    print(f"check-model: {r.model_type}: {summary}")
    return 0 if r.logits_ok and r.packed_ok else 1
