"""`natscale selftest`: can this cluster / launcher setup run ZeRO-3? Run it on every rank.

    deepspeed --num_accelerators 2 --module natscale.cli selftest
    torchrun --nproc_per_node 2 -m natscale.cli selftest
    mpirun -np 2 python -m natscale.cli selftest

Each rank prints one JSON line (losses, parameters held locally vs total); rank 0 prints a summary.
Exit status 1 if the loss did not fall or, under ZeRO-3, the parameters are not partitioned.
"""

from __future__ import annotations

import argparse
import sys
import time

from natscale.cli.argtypes import int_at_least, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps",
        type=int_at_least(2, "the loss is compared before and after training"),
        default=5,
        help="optimizer steps, at least 2 (default 5)",
    )
    parser.add_argument(
        "--zero-stage", type=int, default=3, choices=[0, 1, 2, 3], help="ZeRO stage (default 3)"
    )
    parser.add_argument("--bf16", action="store_true", help="train in bf16 (default fp32)")
    parser.add_argument(
        "--model-config",
        metavar="PATH",
        help="a Hugging Face config.json (or its directory) to build instead of the built-in tiny Llama",
    )
    parser.add_argument(
        "--seq-len",
        type=int_at_least(2, "a token and the next one it predicts"),
        default=32,
        help="tokens per sequence, at least 2 (default 32)",
    )
    parser.add_argument(
        "--micro-batch",
        type=positive_int,
        default=2,
        help="sequences per rank and step (default 2)",
    )
    parser.add_argument(
        "--lr", type=positive_float, default=3e-3, help="AdamW learning rate (default 3e-3)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random tokens (plus the rank)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on rank 0")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from natscale.train.dist import init_distributed
    from natscale.train.selftest import SelftestOptions, load_model_config, run_selftest, verdict

    opts = SelftestOptions(
        steps=args.steps,
        zero_stage=args.zero_stage,
        bf16=args.bf16,
        model_config=args.model_config,
        seq_len=args.seq_len,
        micro_batch=args.micro_batch,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
    )
    try:
        load_model_config(opts.model_config)  # bad input fails before any rank waits on a peer
    except ValueError as exc:
        print(f"natscale selftest: {exc}", file=sys.stderr)
        return 2

    import torch.distributed as dist

    info = init_distributed()
    report = run_selftest(opts, info, started=started)
    reports = [None] * info.world_size
    dist.all_gather_object(reports, report)  # also: rank 0's progress bar is closed by now
    print(report.to_json(), flush=True)
    dist.barrier()  # the summary after every rank's line, where the launcher merges outputs
    ok, line = verdict(reports)
    if info.rank == 0:
        print(line, flush=True)
    dist.destroy_process_group()
    return 0 if ok else 1
