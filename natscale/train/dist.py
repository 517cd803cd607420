"""Process-group setup shared by every distributed entry point (selftest, train, bench).

Works under torchrun, the deepspeed launcher (pdsh / no-ssh / slurm / openmpi backends), plain
``mpirun`` and ``srun``, or a single process. It never lets DeepSpeed's MPI discovery choose the
master address (that discovery uses ``hostname -I``, i.e. the external interface): rank variables
from Open MPI / PMI / SLURM are mapped here instead, and the master defaults to 127.0.0.1 (on one
node; a multi-node world without ``MASTER_ADDR`` is an error, not a hang at the rendezvous).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn

# launcher-specific rank variables -> (RANK, WORLD_SIZE, (LOCAL_RANK, ...)): Open MPI, PMI
# (MPICH's Hydra: MPI_LOCALRANKID; Cray PALS: PMI_LOCAL_RANK, PALS_LOCAL_RANKID), srun, MVAPICH2
_RANK_SOURCES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", ("OMPI_COMM_WORLD_LOCAL_RANK",)),
    ("PMI_RANK", "PMI_SIZE", ("MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID")),
    ("SLURM_PROCID", "SLURM_NTASKS", ("SLURM_LOCALID",)),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", ("MV2_COMM_WORLD_LOCAL_RANK",)),
)
# where LOCAL_RANK comes from when the rank source has none of its own: srun's PMI-2 plugin sets
# PMI_RANK/PMI_SIZE but not MPI_LOCALRANKID, and SLURM_LOCALID next to them
_LOCAL_RANK_VARS = (
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "PMI_LOCAL_RANK",
    "PALS_LOCAL_RANKID",
    "MV2_COMM_WORLD_LOCAL_RANK",
)
# ranks on this node: 1 means LOCAL_RANK 0 even where no local rank is given
_LOCAL_SIZE_VARS = (
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
    "PMI_LOCAL_SIZE",
    "MV2_COMM_WORLD_LOCAL_SIZE",
    "SLURM_NTASKS_PER_NODE",
)
# DeepSpeed's CPU shm all-reduce segment, one per rank (csrc/cpu/comm/shm.cpp: 66 MiB each)
_SHM_BUFFER = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"
_STARTED = False  # init_distributed ran in this process (see exit_process)


class LaunchEnvError(ValueError):
    """The launcher's variables describe a world these ranks cannot join (no MASTER_ADDR for
    several nodes, no local rank for several ranks)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str


def map_rank_env(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Fill RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the launcher's variables.

    Variables that are already set win. Without any launcher, this is a world of one; it then
    gets a free loopback port, so single-process runs on a shared machine never collide on 29500.
    MASTER_ADDR defaults to 127.0.0.1 only on one node: ranks that mpirun / srun started on
    several nodes without it raise LaunchEnvError (each node's loopback would be its own master).
    So do several ranks whose launcher gives no local rank (each would take device 0), unless it
    says this node runs one rank.
    """
    alone = False
    source: tuple[str, str, tuple[str, ...]] | None = None
    if "RANK" not in environ:
        for rank_var, size_var, local_vars in _RANK_SOURCES:
            if rank_var in environ and size_var in environ:
                environ["RANK"] = environ[rank_var]
                environ["WORLD_SIZE"] = environ[size_var]
                source = (rank_var, size_var, local_vars)
                break
        else:
            environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            alone = True
    if "LOCAL_RANK" not in environ:
        local_vars = source[2] if source else ()
        for var in (*local_vars, *_LOCAL_RANK_VARS):
            if var in environ:
                environ["LOCAL_RANK"] = environ[var]
                break
        else:
            if source is not None and not _one_per_node(environ):
                rank_var, size_var, _ = source
                raise LaunchEnvError(
                    f"{rank_var}={environ[rank_var]} of {size_var}={environ[size_var]}, but no "
                    f"local rank ({', '.join(dict.fromkeys((*local_vars, *_LOCAL_RANK_VARS)))}): "
                    "every rank of a node would take device 0. Export LOCAL_RANK (each rank's "
                    "index on its node) to every rank, or start the job with natscale launch "
                    "or another launcher that sets it"
                )
            environ["LOCAL_RANK"] = "0"
    if source is not None and "MASTER_ADDR" not in environ:
        nodes = _several_nodes(environ, source[0])
        if nodes:
            raise LaunchEnvError(
                f"MASTER_ADDR is not set and this {environ['WORLD_SIZE']}-rank job spans several "
                f"nodes ({nodes}): every node would wait on its own 127.0.0.1. Export MASTER_ADDR "
                "(the first node's hostname or address on the network the nodes share) and "
                "MASTER_PORT to every rank, e.g. mpirun -x MASTER_ADDR=node-a or "
                "srun --export=ALL,MASTER_ADDR=node-a; or start the job with natscale launch, "
                "which sets both"
            )
    environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if alone and "MASTER_PORT" not in environ:
        environ["MASTER_PORT"] = str(free_port())
    environ.setdefault("MASTER_PORT", "29500")


def _several_nodes(environ: dict[str, str] | os._Environ, rank_var: str) -> str | None:
    """Why the launcher that set ``rank_var`` put ranks on more than one node, or None when it
    says they share one (or does not say)."""

    def differ(local_var: str, size_var: str) -> str | None:
        local, size = environ.get(local_var), environ.get(size_var)
        if local and size and local != size:
            return f"{local_var}={local} of {size_var}={size}"
        return None

    if rank_var == "OMPI_COMM_WORLD_RANK":
        return differ("OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_SIZE")
    if rank_var == "MV2_COMM_WORLD_RANK":
        return differ("MV2_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_SIZE")
    if rank_var == "PMI_RANK" and "SLURM_PROCID" not in environ:
        # MPICH's Hydra, Cray PALS
        return differ("MPI_LOCALNRANKS", "PMI_SIZE") or differ("PMI_LOCAL_SIZE", "PMI_SIZE")
    for var in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES"):  # srun: this step's nodes first
        value = environ.get(var, "")
        if value.isdigit():
            return f"{var}={value}" if int(value) > 1 else None
    return None


def _one_per_node(environ: dict[str, str] | os._Environ) -> bool:
    """Whether the launcher says this node runs one rank, or the world is one rank."""
    if environ.get("WORLD_SIZE") == "1":
        return True
    # SLURM_NTASKS_PER_NODE may read "1(x4)": one task on each of 4 nodes
    return any(environ.get(var, "").split("(")[0] == "1" for var in _LOCAL_SIZE_VARS)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def install_hang_guard() -> None:
    """Make a stuck or crashing rank say where it is.

    Always: Python stacks on fatal signals (SIGSEGV, SIGABRT, ...); on SIGUSR1 (the test
    harness sends it before killing a run that timed out); and on SIGTERM, before the default
    action ends the process (launchers SIGTERM the surviving ranks when one fails, so every rank
    of a failed job says where it was). If NATSCALE_HANG_DUMP_S is set, also dump every thread's
    stack and exit after that many seconds (harnesses set it below their own timeout, so a hung
    rank reports itself even when its launcher is stuck too).
    """
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # leave a program's own handler alone
        faulthandler.register(signal.SIGTERM, file=sys.stderr, all_threads=True, chain=True)
    seconds = float(os.environ.get("NATSCALE_HANG_DUMP_S", "0") or 0)
    if seconds > 0:
        faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)


def init_distributed(timeout_s: float | None = None) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, the accelerator's backend on GPU).

    Idempotent. On CPU, DeepSpeed maps a shared-memory all-reduce segment per rank when all ranks
    are on one node; once every rank has mapped its peers' segments they are unlinked here, so a
    killed job cannot leave them in /dev/shm.
    """
    import datetime

    map_rank_env()
    install_hang_guard()
    import deepspeed
    import deepspeed.comm as ds_comm
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    global _STARTED
    backend = get_accelerator().communication_backend_name()
    first = not ds_comm.is_initialized()
    _STARTED = True
    kwargs = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    from natscale.ops.first_build import announce_shm_op_build, load_shm_op, use_natscale_ninja

    use_natscale_ninja()  # DeepSpeed JIT-builds ops from here on (the shm op on CPU)
    if first and get_accelerator().device_name() == "cpu":
        announce_shm_op_build()  # DeepSpeed compiles it silently on first use (1-3 min)
        with _without_op_loaded_line():
            load_shm_op()  # under natscale's build lock: a killed build's lock file cannot hang us
    # auto_mpi_discovery=False: rank variables come from map_rank_env, never from `hostname -I`
    with _without_op_loaded_line():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, **kwargs)
    if first and get_accelerator().device_name() == "cpu":
        _unlink_shm_buffer(dist)
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=backend,
    )


@contextlib.contextmanager
def _without_op_loaded_line():
    """Drop DeepSpeed's ``DeepSpeed ... built successfully`` print (every rank, every command,
    even when the op was only loaded from the cache); everything else printed goes through."""
    import io

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines(keepends=True):
            if not (line.startswith("DeepSpeed ") and line.rstrip().endswith("built successfully")):
                sys.stdout.write(line)
        sys.stdout.flush()


def _unlink_shm_buffer(dist) -> None:
    # DeepSpeed's shm op maps the segments iff LOCAL_SIZE == world size (shm_interface.cpp); the
    # same test on every rank keeps the barrier collective. Peers open each segment by name during
    # their init; after the barrier they all have, and the mappings outlive the name (POSIX shm).
    world_size = dist.get_world_size()
    if os.environ.get("LOCAL_SIZE") != str(world_size):
        return
    if world_size > 1:
        dist.barrier()
    path = _SHM_BUFFER.format(
        uid=os.getuid(),
        addr=os.environ.get("MASTER_ADDR", ""),
        port=os.environ.get("MASTER_PORT", ""),
        rank=dist.get_rank(),
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_shm_buffers(port: int) -> list[str]:
    """Delete this user's DeepSpeed shm all-reduce segments of a finished job on ``port`` (any
    master address, any rank): a rank killed before its init unlinked them leaves them behind.
    Returns the paths removed."""
    import glob

    pattern = _SHM_BUFFER.format(uid=os.getuid(), addr="*", port=port, rank="*")
    removed = []
    for path in glob.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


def started() -> bool:
    """Whether init_distributed ran in this process (even if the groups are destroyed since)."""
    return _STARTED


def exit_process(code: int) -> NoReturn:
    """End a process that used torch.distributed: atexit handlers, flush, then ``os._exit``.

    Interpreter finalization is skipped on purpose. A gloo worker thread may still be releasing
    the last collective's work after the caller returned from it (and after
    destroy_process_group, which does not join gloo's threads); that release drops Python
    tensors, and a thread that asks for the GIL while Python finalizes is torn down inside a
    noexcept destructor: "terminate called without an active exception", SIGABRT, a failed job
    after a successful run (pytorch/pytorch#179291, seen here ~1 run in 12 under load). The
    atexit handlers run first, while the interpreter is whole, so files, loggers and child
    processes are closed as on a normal exit.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
