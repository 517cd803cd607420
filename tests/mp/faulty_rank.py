"""Test-only entry point: after process-group init, one rank crashes or hangs; the others wait.

    faulty_rank.py --mode crash|hang [--bad-rank 1]

The healthy ranks sit in a barrier that the bad rank never reaches, so a "crash" checks that a
launcher tears the job down and a "hang" checks the hang guard (stack dumps, then exit).
"""

from __future__ import annotations

import argparse
import os
import time

from natscale.train.dist import init_distributed


def hang_forever() -> None:
    while True:
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["crash", "hang"], required=True)
    parser.add_argument("--bad-rank", type=int, default=1)
    args, _ = parser.parse_known_args()  # the deepspeed launcher adds --local_rank=N

    import torch.distributed as dist

    info = init_distributed()
    print(
        f"faulty_rank: rank {info.rank} of {info.world_size} initialised, pid {os.getpid()}",
        flush=True,
    )
    if info.rank == args.bad_rank:
        if args.mode == "crash":
            raise RuntimeError(f"faulty_rank: rank {info.rank} crashes on purpose")
        hang_forever()
    dist.barrier()
    print(f"faulty_rank: rank {info.rank} passed the barrier (it should not have)", flush=True)


if __name__ == "__main__":
    main()
