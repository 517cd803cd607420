"""natscale.train.dist: launcher variables -> torch.distributed's (loopback master); process exit."""

from __future__ import annotations

import subprocess
import sys

from natscale.train.dist import map_rank_env


def test_open_mpi_variables_are_mapped_and_the_master_stays_on_loopback():
    env = {
        "OMPI_COMM_WORLD_RANK": "3",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    }
    map_rank_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "29500")


def test_slurm_variables_are_mapped_and_launcher_values_win():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "node7"}
    map_rank_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == (
        "5",
        "8",
        "1",
        "node7",
    )
    env = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_RANK": "0",
        "OMPI_COMM_WORLD_SIZE": "2",
    }
    map_rank_env(env)
    assert env["RANK"] == "1"  # torchrun / deepspeed already set it


def test_a_process_alone_is_a_world_of_one_on_a_free_port():
    env: dict[str, str] = {}
    map_rank_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("0", "1", "0")
    assert env["MASTER_ADDR"] == "127.0.0.1" and 0 < int(env["MASTER_PORT"]) < 65536
    env = {"MASTER_PORT": "29611"}
    map_rank_env(env)
    assert env["MASTER_PORT"] == "29611"


def test_exit_process_runs_atexit_handlers_flushes_and_keeps_the_code():
    # distributed commands end through exit_process (no interpreter finalization): what a normal
    # exit would still do (atexit handlers, buffered output) must happen, and the status survive
    code = (
        "import atexit, sys\n"
        "from natscale.train.dist import exit_process\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('buffered, no newline; ')\n"
        "exit_process(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newline; atexit ran\n"
