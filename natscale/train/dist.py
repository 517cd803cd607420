"""Process-group setup shared by every distributed entry point (selftest, train, bench).

Works under torchrun, the deepspeed launcher (pdsh / no-ssh / slurm / openmpi backends), plain
``mpirun`` and ``srun``, or a single process. It never lets DeepSpeed's MPI discovery choose the
master address (that discovery uses ``hostname -I``, i.e. the external interface): rank variables
from Open MPI / PMI / SLURM are mapped here instead, and the master defaults to 127.0.0.1.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from dataclasses import dataclass

# launcher-specific rank variables -> (RANK, WORLD_SIZE, LOCAL_RANK)
_RANK_SOURCES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str


def map_rank_env(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Fill RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the launcher's variables.

    Variables that are already set win. Without any launcher, this is a world of one.
    """
    if "RANK" not in environ:
        for rank_var, size_var, local_var in _RANK_SOURCES:
            if rank_var in environ and size_var in environ:
                environ["RANK"] = environ[rank_var]
                environ["WORLD_SIZE"] = environ[size_var]
                environ["LOCAL_RANK"] = environ.get(local_var, "0")
                break
        else:
            environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    environ.setdefault("LOCAL_RANK", "0")
    environ.setdefault("MASTER_ADDR", "127.0.0.1")
    environ.setdefault("MASTER_PORT", "29500")


def install_hang_guard() -> None:
    """If NATSCALE_HANG_DUMP_S is set, dump every thread's stack and exit after that many seconds.

    Test harnesses set it below their own timeout, so a hung rank says where it hangs.
    """
    seconds = float(os.environ.get("NATSCALE_HANG_DUMP_S", "0") or 0)
    if seconds > 0:
        faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)


def init_distributed(timeout_s: float | None = None) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, the accelerator's backend on GPU)."""
    import datetime

    map_rank_env()
    install_hang_guard()
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    backend = get_accelerator().communication_backend_name()
    if not dist.is_initialized():
        kwargs = {}
        if timeout_s is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, **kwargs)
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=backend,
    )


def is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0
