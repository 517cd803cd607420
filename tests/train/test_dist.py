"""natscale.train.dist: launcher variables -> torch.distributed's (loopback master); process exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from natscale.train.dist import LaunchEnvError, map_rank_env


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


def test_srun_with_pmi2_keeps_each_rank_on_its_own_device():
    # Slurm's mpi/pmi2 plugin sets PMI_RANK/PMI_SIZE but no MPI_LOCALRANKID: LOCAL_RANK must come
    # from SLURM_LOCALID, not default to 0 (every rank of the node on device 0)
    env = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "3",
        "SLURM_NNODES": "1",
        "PMI_RANK": "3",
        "PMI_SIZE": "8",
    }
    map_rank_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "8", "3")
    env = {"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "SLURM_LOCALID": "0"}
    map_rank_env(env)
    assert env["LOCAL_RANK"] == "1"  # the source's own local rank comes first


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3", "SLURM_NNODES": "2"},
        {
            "PMI_RANK": "3",
            "PMI_SIZE": "8",
            "SLURM_PROCID": "3",
            "SLURM_LOCALID": "3",
            "SLURM_STEP_NUM_NODES": "2",
        },
        {
            "OMPI_COMM_WORLD_RANK": "3",
            "OMPI_COMM_WORLD_SIZE": "8",
            "OMPI_COMM_WORLD_LOCAL_RANK": "3",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
        },
        {"PMI_RANK": "3", "PMI_SIZE": "8", "MPI_LOCALRANKID": "3", "MPI_LOCALNRANKS": "4"},
        {"PMI_RANK": "5", "PMI_SIZE": "8", "PMI_LOCAL_RANK": "1", "PMI_LOCAL_SIZE": "4"},
        {
            "MV2_COMM_WORLD_RANK": "3",
            "MV2_COMM_WORLD_SIZE": "8",
            "MV2_COMM_WORLD_LOCAL_RANK": "1",
            "MV2_COMM_WORLD_LOCAL_SIZE": "4",
        },
    ],
    ids=["slurm", "srun-pmi2", "openmpi", "hydra", "cray-pals", "mvapich2"],
)
def test_a_multi_node_world_without_master_addr_is_an_error_not_a_hang(env):
    with pytest.raises(LaunchEnvError, match=r"MASTER_ADDR is not set.*natscale launch"):
        map_rank_env(dict(env))
    env = {**env, "MASTER_ADDR": "node-a"}
    map_rank_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == (
        env.get("PMI_RANK", "3"),
        "8",
        "node-a",
    )


def test_one_node_or_a_single_process_in_a_multi_node_allocation_keeps_loopback():
    one_node = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
        "SLURM_NNODES": "2",  # mpirun inside a 2-node allocation, all ranks on this node
    }
    map_rank_env(one_node)
    assert one_node["MASTER_ADDR"] == "127.0.0.1"
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_NNODES": "2", "SLURM_PROCID": "0"}
    map_rank_env(torchrun)  # RANK came from another launcher: not srun's world
    assert torchrun["MASTER_ADDR"] == "127.0.0.1"


def test_the_command_reports_a_multi_node_world_without_master_addr(monkeypatch, capsys):
    import natscale.cli.selftest
    from natscale.cli.main import main

    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NNODES": "2"}
    monkeypatch.setattr(natscale.cli.selftest, "run", lambda args: map_rank_env(env))
    assert main(["selftest"]) == 2  # each rank says why and exits, before any process group
    assert "natscale selftest: MASTER_ADDR is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # Cray PALS (PBS mpiexec): PMI_* with PMI_LOCAL_RANK, or PALS_LOCAL_RANKID
        (
            {
                "PMI_RANK": "5",
                "PMI_SIZE": "8",
                "PMI_LOCAL_RANK": "1",
                "PMI_LOCAL_SIZE": "4",
                "MASTER_ADDR": "n0",
            },
            ("5", "8", "1"),
        ),
        ({"PMI_RANK": "6", "PMI_SIZE": "8", "PALS_LOCAL_RANKID": "2"}, ("6", "8", "2")),
        # MVAPICH2's mpirun_rsh
        (
            {
                "MV2_COMM_WORLD_RANK": "1",
                "MV2_COMM_WORLD_SIZE": "2",
                "MV2_COMM_WORLD_LOCAL_RANK": "1",
                "MV2_COMM_WORLD_LOCAL_SIZE": "2",
            },
            ("1", "2", "1"),
        ),
        # no local rank, but one rank per node: device 0 is right
        (
            {"PMI_RANK": "1", "PMI_SIZE": "2", "PMI_LOCAL_SIZE": "1", "MASTER_ADDR": "n0"},
            ("1", "2", "0"),
        ),
    ],
    ids=["pals", "pals-rankid", "mvapich2", "one-per-node"],
)
def test_cray_pals_and_mvapich2_ranks_are_mapped(env, expected):
    """PALS' local rank was unknown (LOCAL_RANK fell back to 0: every rank on device 0) and
    MVAPICH2's ranks were each a world of one (RANK=0 WORLD_SIZE=1)."""
    map_rank_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"PMI_RANK": "5", "PMI_SIZE": "8", "MASTER_ADDR": "n0"},
        {"MV2_COMM_WORLD_RANK": "1", "MV2_COMM_WORLD_SIZE": "2"},
    ],
)
def test_several_ranks_without_a_local_rank_is_an_error_not_device_0_for_all(env):
    with pytest.raises(LaunchEnvError, match=r"but no local rank \(.*Export LOCAL_RANK"):
        map_rank_env(dict(env))
    env = {**env, "LOCAL_RANK": "1", "MASTER_ADDR": "n0"}  # given: taken as it is
    map_rank_env(env)
    assert env["LOCAL_RANK"] == "1"


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
