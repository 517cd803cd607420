"""`natscale convert`: ZeRO checkpoint -> Hugging Face folder (`zero-to-hf`) or DeepSpeed universal
checkpoint (`zero-to-universal`); trajectory files (`data`)."""

from __future__ import annotations

import argparse
import sys

from natscale.cli.argtypes import SIZE_HELP, path_text, positive_int, size_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="convert_command", metavar="WHAT", required=True)
    z = sub.add_parser(
        "zero-to-hf",
        help="DeepSpeed ZeRO-1/2/3 checkpoint -> sharded safetensors + config + tokenizer",
        description="Rebuild full tensors from the fp32 master weights of a ZeRO checkpoint (any "
        "data-parallel world size) and write a folder AutoModelForCausalLM.from_pretrained loads. "
        "Peak memory is about one tensor, not the model. config.json and the tokenizer are looked "
        "up in --config-dir, the tag folder, CKPT_DIR and CKPT_DIR/.. (each at the top or in "
        "hf_config/, model_config/, tokenizer/).",
    )
    z.add_argument(
        "ckpt_dir", type=path_text, help="folder with DeepSpeed's 'latest' file and tag folders"
    )
    z.add_argument(
        "out_dir", type=path_text, help="output folder (created atomically; must not exist)"
    )
    z.add_argument("--tag", help="checkpoint tag (default: the one named in CKPT_DIR/latest)")
    z.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="weights dtype (default auto: the run's training precision)",
    )
    z.add_argument(
        "--max-shard-size",
        default="5GB",
        type=size_bytes,
        metavar="SIZE",
        help=f"largest shard (default 5GB): {SIZE_HELP}, e.g. 5GB, 500MB or 2GiB",
    )
    z.add_argument(
        "--config-dir", type=path_text, help="folder with the model's config.json (and tokenizer)"
    )
    z.add_argument(
        "--verify",
        action="store_true",
        help="load the result with AutoModelForCausalLM and compare logits with the checkpoint",
    )
    z.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    z.add_argument("--quiet", "--no-progress", action="store_true", help="no progress bar")

    u = sub.add_parser(
        "zero-to-universal",
        help="DeepSpeed ZeRO checkpoint -> universal checkpoint (loads on any number of ranks)",
        description="Run DeepSpeed's ds_to_universal on one tag: write CKPT_DIR/TAG_universal "
        "(atomically), one file per parameter with its fp32 weights and optimizer moments. "
        "`natscale train --resume` does this by itself when the number of ranks changed; this "
        "command does it ahead of time (e.g. on a CPU node before a job on another world size).",
    )
    u.add_argument(
        "ckpt_dir", type=path_text, help="folder with DeepSpeed's 'latest' file and tag folders"
    )
    u.add_argument("--tag", help="checkpoint tag (default: the one named in CKPT_DIR/latest)")
    u.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes for DeepSpeed's extract/merge passes (default 1)",
    )
    u.add_argument(
        "--no-progress", "--quiet", action="store_true", help="no progress bars (DeepSpeed's)"
    )

    d = sub.add_parser(
        "data",
        help="convert trajectory files between the formats the data pipeline reads",
        description="Read trajectories with the data pipeline's loader for --from (nat, sharegpt, "
        "agentinstruct, openai, alpaca, fireact) and write them in the --to format. For nat input "
        "the question and prompt files next to IN are used unless given with --option.",
    )
    d.add_argument("--from", dest="src_format", required=True, help="input format")
    d.add_argument("--to", dest="dst_format", required=True, help="output format")
    d.add_argument("input", type=path_text, help="input file or folder")
    d.add_argument(
        "output",
        type=path_text,
        help="output .json or .jsonl (written atomically; nat adds side files)",
    )
    d.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loader option, VALUE parsed as JSON if it can be (e.g. questions=q.jsonl, "
        "question_turn=1); repeatable",
    )
    d.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    d.add_argument(
        "--tool-calls",
        action="store_true",
        help="turn ReAct text turns (Thought/Action, Observation) into native tool calls and "
        "tool results, with tool schemas (for --to openai / sharegpt; natscale eval's "
        "loop.protocol: tool_calls runs such an agent)",
    )


def run(args: argparse.Namespace) -> int:
    from natscale.cli.interrupt import run_interruptible

    return run_interruptible(f"convert {args.convert_command}", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from natscale.checkpoint.safety import UnsafeCheckpointError
    from natscale.checkpoint.universal import UniversalConversionError
    from natscale.convert.errors import ConvertError

    try:
        if args.convert_command == "zero-to-hf":
            return _zero_to_hf(args)
        if args.convert_command == "zero-to-universal":
            return _zero_to_universal(args)
        return _data(args)
    except UnsafeCheckpointError as exc:
        print(f"natscale convert {args.convert_command}: error: {exc}", file=sys.stderr)
        print(f"convert {args.convert_command}: failed, nothing written", file=sys.stderr)
        return 2
    except (ConvertError, UniversalConversionError, OSError) as exc:  # OSError: e.g. unwritable
        print(f"natscale convert {args.convert_command}: error: {exc}", file=sys.stderr)
        print(f"convert {args.convert_command}: failed, nothing written", file=sys.stderr)
        return 2  # bad input: the one exit code every command uses


def _zero_to_hf(args: argparse.Namespace) -> int:
    from natscale.checkpoint.zero_to_hf import convert_zero_to_hf

    res = convert_zero_to_hf(
        args.ckpt_dir,
        args.out_dir,
        tag=args.tag,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        config_dir=args.config_dir,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    status = 0
    if args.verify:
        from natscale.checkpoint.verify import verify_export

        try:  # CKPT_DIR may be the tag folder itself: DeepSpeed's reader wants its parent
            v = verify_export(res.out_dir, res.ckpt_root, tag=res.tag)
        except Exception as exc:  # the export is complete: say so, not "nothing written"
            print(
                f"natscale convert zero-to-hf: --verify could not run ({type(exc).__name__}: "
                f"{exc}); {res.out_dir} was written and is kept",
                file=sys.stderr,
            )
            return 1
        verdict = "OK" if v.ok else f"MISMATCH (tolerance {v.atol:.1e})"
        print(
            f"verify: max |logit diff| vs checkpoint weights in {res.dtype}: {v.max_abs_diff:.3e}; "
            f"vs fp32 weights: {v.max_abs_diff_vs_fp32:.3e} (max |logit| {v.max_abs_logit:.2f}, "
            f"{v.num_sequences}x{v.seq_len} tokens): {verdict}"
        )
        status = 0 if v.ok else 1
    tok = "tokenizer" if res.tokenizer_dir else "no tokenizer"
    print(
        f"zero-to-hf: wrote {res.out_dir} ({len(res.shards)} shard(s), {res.num_params:,} params, "
        f"{res.dtype}, {res.num_bytes / 2**20:.1f} MiB, {tok}) from tag {res.tag} (ZeRO-{res.stage}, "
        f"{res.world_size} rank(s)) in {res.seconds:.1f}s"
    )
    return status


def _zero_to_universal(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from natscale.checkpoint.layout import CheckpointDir
    from natscale.checkpoint.universal import (
        UniversalConversionError,
        convert_to_universal,
        saved_world_size,
        universal_is_current,
    )
    from natscale.checkpoint.zero_files import resolve_tag

    # the same reading of CKPT_DIR and --tag as zero-to-hf, with its messages (a missing folder,
    # a run folder given for its checkpoints/, an unknown tag and the tags there are)
    ckpt_dir, tag, tag_dir = resolve_tag(Path(args.ckpt_dir), args.tag)
    ckpts = CheckpointDir(ckpt_dir)
    world = saved_world_size(tag_dir)
    if world is None:
        raise UniversalConversionError(
            f"{tag_dir}: no ZeRO optimizer shards (zero_pp_rank_*_optim_states.pt); "
            "a checkpoint without ZeRO loads on any number of ranks as it is"
        )
    existed = universal_is_current(ckpt_dir, tag)  # a stale copy is converted again
    start = time.perf_counter()
    out = convert_to_universal(ckpt_dir, tag, workers=args.workers, progress=not args.no_progress)
    what = "already there, kept" if existed else f"written in {time.perf_counter() - start:.1f}s"
    when = "" if tag == ckpts.read_latest() else f" once {tag} is named in 'latest'"
    print(
        f"zero-to-universal: {out} ({what}) from tag {tag} ({world} rank(s)); "
        f"`natscale train --resume` loads it on a number of ranks other than {world}{when}"
    )
    return 0


def _options(pairs: list[str], src: str) -> dict:
    import json

    from natscale.convert.errors import ConvertError
    from natscale.data.formats import FORMATS

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConvertError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
        if src in FORMATS:
            try:
                options[key] = FORMATS[src].parse_option(key, options[key])
            except TypeError as exc:
                raise ConvertError(f"--option {pair!r}: {exc}") from None
    return options


def _data(args: argparse.Namespace) -> int:
    from natscale.convert.trajectories import convert_trajectories

    res = convert_trajectories(
        args.input,
        args.output,
        src=args.src_format,
        dst=args.dst_format,
        options=_options(args.option, args.src_format),
        overwrite=args.overwrite,
        tool_calls=args.tool_calls,
    )
    for key, value in res.options.items():
        print(f"note: loader option {key}={value}", file=sys.stderr)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    extra = f" and {len(res.files) - 1} side file(s)" if len(res.files) > 1 else ""
    print(
        f"convert data: wrote {res.num_records} trajectories to {res.output}{extra} "
        f"({args.src_format} -> {args.dst_format}, {res.num_skipped} skipped)"
    )
    return 0
