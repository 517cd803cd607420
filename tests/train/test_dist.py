"""natscale.train.dist.map_rank_env: launcher variables -> torch.distributed's, loopback master."""

from __future__ import annotations

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
