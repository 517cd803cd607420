"""``LaunchOptions.cli_argv`` is a command line the real ``natscale launch`` parses back into the
same options (what a user copies to another node, and what benchmarks run)."""

from __future__ import annotations

import argparse

import pytest

from natscale.cli import launch as launch_cli
from natscale.launch.options import LaunchOptions


@pytest.mark.parametrize(
    "opts",
    [
        LaunchOptions(["run.yaml"]),  # local: one node, no --backend
        LaunchOptions(["run.yaml", "--set", "train.lr=2e-5"], gpus_per_node=2, env=["A=1"]),
        LaunchOptions(
            ["run.yaml"],
            backend="no-ssh",
            hostfile="hosts",
            node_rank=1,
            master_addr="10.0.0.1",
            master_port=29611,
        ),
        LaunchOptions([], command="selftest", backend="pdsh", hostfile="hosts", nodes=2),
        # values starting with '-' (the no-ssh dry run printed `--deepspeed-args
        # --bind_cores_to_rank`, which argparse refuses)
        LaunchOptions(
            ["run.yaml"],
            backend="no-ssh",
            hostfile="-hosts",
            node_rank=0,
            deepspeed_args="--bind_cores_to_rank",
            launcher_args="-x",
            rank_logs="-logs",
        ),
    ],
)
def test_cli_argv_parses_back_to_the_same_options(opts):
    argv = opts.cli_argv()
    assert argv[:2] == ["natscale", "launch"]
    parser = argparse.ArgumentParser()
    launch_cli.add_arguments(parser)
    assert launch_cli.options_from_args(parser.parse_args(argv[2:])) == opts
