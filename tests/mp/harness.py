"""Run a natscale entry point on N CPU ranks under a real launcher: the multi-process test harness.

Use it from any test file (``tests/`` and ``tests/mp/`` are packages; pyproject's pytest
``pythonpath = ["."]`` puts the repository root on sys.path)::

    import pytest
    from tests.mp.harness import LAUNCHERS, assert_ok, run_distributed

    @pytest.mark.multiproc
    @pytest.mark.parametrize("launcher", LAUNCHERS)
    def test_selftest_trains(launcher, tmp_path):
        result = run_distributed(["selftest", "--steps", "3"], launcher=launcher, log_dir=tmp_path)
        assert_ok(result)                            # raises with every rank's log on failure
        assert result.last(1, "selftest")["world_size"] == 2

Launch modes (``launcher=``), each with ``nprocs`` ranks on this machine:
  torchrun   ``torchrun --nnodes 1 --nproc_per_node N -m natscale.cli ...``
  deepspeed  ``deepspeed --num_accelerators N --module natscale.cli ...``
  mpirun     ``mpirun -np N ... python -u -m natscale.cli ...`` (ranks mapped by natscale.train.dist)
  nossh      2 "nodes": ``deepspeed --hostfile HF --no_ssh --node_rank {0,1} ...``, one per node
  single     one process, no launcher (``natscale ...``, the console script); nprocs must be 1
  launch     2 "nodes": ``natscale launch --backend no-ssh --node-rank {0,1} ... ARGS`` (ARGS: more
             launch options, ``--``, then the command's arguments)
  launch-once  one ``natscale launch ... ARGS`` (ARGS name the backend and hostfile: pdsh, openmpi)
  mpi-script ``launcher/mpi/run.sh HOSTFILE ARGS`` (hostfile ``localhost slots=N``)

Everything stays on loopback: MASTER_ADDR=127.0.0.1, GLOO_SOCKET_IFNAME=lo, a fresh free port per
run, Open MPI's TCP out-of-band channel on ``lo``, and a ``hostname`` shim first on PATH so
``hostname -I`` (DeepSpeed's MPI discovery) answers 127.0.0.1 even for code that calls it.
Each rank's stdout and stderr go to its own file through the launcher's own feature (torchrun
``--log-dir/--redirects``, deepspeed ``--enable_each_rank_log``, mpirun ``--output-filename``).

Hang guard: ranks get ``NATSCALE_HANG_DUMP_S`` below ``timeout`` (natscale.train.dist dumps every
thread's stack and exits then); if the run still outlives ``timeout``, the harness sends SIGUSR1
to every rank (faulthandler dumps stacks), waits briefly, and kills every process of the run
(found by a variable they all inherit, so orphans and torchrun's own-session workers go too).
DeepSpeed's ``/dev/shm/deepspeed_allreduce_buffer_*`` segments of the run are removed afterwards,
and DeepSpeed's shm_comm op is JIT-built once into ``TORCH_EXTENSIONS_DIR`` (default: the
project's ``.cache/torch_extensions``, as in the Makefile) before the first launch.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil  # a DeepSpeed dependency
import pytest

from natscale.train.dist import free_port
from tests.mp.launchers import commands, entry_argv, rank_logs_by_rank

Launcher = Literal[
    "torchrun", "deepspeed", "mpirun", "nossh", "single", "launch", "launch-once", "mpi-script"
]
# the distributed modes; "single" (one process, no launcher) is for entry points run alone
LAUNCHERS: tuple[Launcher, ...] = ("torchrun", "deepspeed", "mpirun", "nossh")
REPO_ROOT = Path(__file__).resolve().parents[2]
_OPS_READY: set[str] = set()  # TORCH_EXTENSIONS_DIRs checked in this process
# Inherited rank variables would make a launched rank believe it is someone else.
_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")
_RANK_PREFIXES = ("OMPI_", "PMI_", "PMIX_", "SLURM_", "TORCHELASTIC_")
_MARKER = "NATSCALE_HARNESS_RUN"  # set in every process of a run, to find them all afterwards
_SHIM = """#!/bin/sh
# natscale test harness: `hostname -I` (DeepSpeed's MPI discovery) must answer loopback only.
case "$1" in -I|--all-ip-addresses) echo 127.0.0.1 ;; *) exec {real} "$@" ;; esac
"""


@dataclass
class RunResult:
    """What one launch produced. ``rank_logs``/``records`` are keyed by global rank."""

    launcher: str
    nprocs: int
    port: int
    cmds: list[list[str]]
    returncodes: list[int | None]  # one per launcher process (2 for nossh); -N: killed by signal N
    timed_out: bool
    elapsed_s: float
    log_dir: Path
    launcher_logs: list[str]
    rank_logs: dict[int, str]
    records: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # JSON lines
    shm_leftovers: list[str] = field(default_factory=list)  # DeepSpeed segments we had to remove

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(rc == 0 for rc in self.returncodes)

    def last(self, rank: int, event: str | None = None) -> dict[str, Any]:
        """The last JSON record of ``rank`` (with ``"event": event`` if given)."""
        found = [r for r in self.records.get(rank, []) if event is None or r.get("event") == event]
        if not found:
            raise AssertionError(
                f"rank {rank} printed no JSON record{f' {event!r}' if event else ''}\n{self.format_logs()}"
            )
        return found[-1]

    def format_logs(self, max_lines: int = 200) -> str:
        """Every launcher's and every rank's log (the last ``max_lines`` lines of each)."""
        status = "timed out" if self.timed_out else f"launcher exit codes {self.returncodes}"
        parts = [
            f"{self.launcher} x{self.nprocs} (port {self.port}): {status} after {self.elapsed_s:.1f} s; logs in {self.log_dir}"
        ]
        for i, (cmd, text) in enumerate(zip(self.cmds, self.launcher_logs, strict=True)):
            parts.append(_section(f"launcher {i}: {' '.join(cmd)}", text, max_lines))
        for rank in range(self.nprocs):
            text = self.rank_logs.get(rank)
            parts.append(
                _section(
                    f"rank {rank}",
                    "(no log file: the rank never started?)" if text is None else text,
                    max_lines,
                )
            )
        return "\n".join(parts)


def _section(title: str, text: str, max_lines: int) -> str:
    lines = text.splitlines()
    cut = (
        f"[... {len(lines) - max_lines} earlier lines cut ...]\n" if len(lines) > max_lines else ""
    )
    return f"===== {title} =====\n{cut}" + "\n".join(lines[-max_lines:])


def assert_ok(result: RunResult) -> None:
    """Raise AssertionError with every rank's log unless all launchers and ranks succeeded."""
    missing = [r for r in range(result.nprocs) if r not in result.rank_logs]
    if not result.ok or missing:
        why = f"ranks {missing} wrote no log; " if missing else ""
        raise AssertionError(f"distributed run failed: {why}{result.format_logs()}")


def run_distributed(
    args: list[str],
    *,
    launcher: Launcher,
    nprocs: int = 2,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    entry: str = "natscale",
    log_dir: str | os.PathLike | None = None,
    hang_dump_s: float | None = None,
    nodes: int = 2,
    wrap: Callable[[int, list[str]], list[str]] | None = None,
) -> RunResult:
    """Launch ``entry args...`` on ``nprocs`` ranks under ``launcher`` and wait (at most ``timeout`` s).

    entry: ``"natscale"`` (the CLI, run as ``-m natscale.cli``), a path to a ``.py`` script, or a
    module name. env: extra variables for every rank (they win). log_dir: the logs go to
    ``log_dir/<launcher>-<port>/`` (default: a temporary directory, removed after a successful
    run; ``result.log_dir`` says where). hang_dump_s: seconds after
    process-group init at which each rank dumps its stacks and exits (default a bit below
    ``timeout``; 0 disables). nodes: "nodes" for ``nossh``/``launch`` (``nprocs`` must divide
    evenly). wrap: ``wrap(i, cmd)`` is run instead of launcher process ``i``'s command (e.g. to
    prefix ``ip netns exec NS``). Never raises for a failed run: inspect the result or call ``assert_ok``.
    """
    if launcher in ("mpirun", "mpi-script") and shutil.which("mpirun") is None:
        pytest.skip("mpirun not found (install Open MPI: scripts/sysdeps.sh)")
    if launcher == "single" and nprocs != 1:
        raise ValueError(f"single: one process, not nprocs={nprocs}")
    if launcher in ("nossh", "launch") and nprocs % nodes:
        raise ValueError(f"{launcher}: nprocs={nprocs} does not split into {nodes} nodes")
    if hang_dump_s is None:
        hang_dump_s = max(5.0, timeout - max(15.0, 0.2 * timeout))
    port = free_port()
    keep_logs = log_dir is not None
    if log_dir is None:
        log_dir = tempfile.mkdtemp(prefix="natscale-mp-")
    log_dir = Path(log_dir).resolve() / f"{launcher}-{port}"  # several runs may share a log_dir
    log_dir.mkdir(parents=True)
    if launcher == "nossh":
        # DeepSpeed's launch.py checks for, then creates, --enable_each_rank_log's directory: two
        # nossh "nodes" race there and the loser exits before starting its rank (natscale launch
        # creates it itself). Create it first.
        (log_dir / "ranks").mkdir()
    if (
        launcher == "mpi-script"
    ):  # launcher/mpi/run.sh: loopback, per-rank logs (tests may override)
        mpirun_args = f"--oversubscribe --mca btl self,vader --output-filename {log_dir / 'mpi'}"
        env = {"IFNAME": "lo", "MPIRUN_ARGS": mpirun_args, **(env or {})}
    run_env = _rank_env(port, hang_dump_s, log_dir, env)
    ensure_deepspeed_ops(run_env)
    cmds = commands(launcher, nprocs, nodes, port, entry_argv(entry), list(args), log_dir)
    if wrap is not None:
        cmds = [wrap(i, cmd) for i, cmd in enumerate(cmds)]

    start = time.monotonic()
    logs = [log_dir / f"launcher{i}.log" for i in range(len(cmds))]
    procs = []
    for cmd, log in zip(cmds, logs, strict=True):
        with open(log, "wb") as out:  # the child keeps its own copy of the fd
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=run_env,
                    cwd=cwd or log_dir,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
    try:
        timed_out = _wait(procs, deadline=start + timeout)
    finally:
        _stop(procs, run_env[_MARKER])  # dump the stacks of what is left, then kill it all
        shm_leftovers = _remove_shm(port)
    elapsed = time.monotonic() - start

    rank_logs = rank_logs_by_rank(launcher, log_dir)
    result = RunResult(
        launcher=launcher,
        nprocs=nprocs,
        port=port,
        cmds=cmds,
        returncodes=[p.returncode for p in procs],
        timed_out=timed_out,
        elapsed_s=elapsed,
        log_dir=log_dir,
        launcher_logs=[log.read_text(errors="replace") for log in logs],
        rank_logs=rank_logs,
        records={rank: parse_json_lines(text) for rank, text in rank_logs.items()},
        shm_leftovers=shm_leftovers,
    )
    if result.ok and not keep_logs:
        shutil.rmtree(log_dir.parent, ignore_errors=True)
    return result


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` that is one JSON object (progress bars' ``\\r`` redraws ignored)."""
    records = []
    for line in text.splitlines():
        line = line.rsplit("\r", 1)[-1].strip()
        if line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(json.JSONDecodeError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    records.append(obj)
    return records


def ensure_deepspeed_ops(env: dict[str, str]) -> None:
    """JIT-build DeepSpeed's CPU shm_comm op into env's TORCH_EXTENSIONS_DIR once (35-80 s cold).

    Every CPU rank loads it in init_distributed; built here, the first launch neither pays for
    the build inside its hang-guard budget nor has its ranks queue on the build lock.
    """
    ext_dir = env["TORCH_EXTENSIONS_DIR"]
    built = Path(ext_dir) / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    if ext_dir in _OPS_READY or built.exists():
        return
    code = "from deepspeed.accelerator import get_accelerator as a; a().create_op_builder('ShareMemCommBuilder').load()"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"building DeepSpeed's shm_comm op failed:\n{proc.stdout}\n{proc.stderr}"
        )
    _OPS_READY.add(ext_dir)  # a prebuilt op (DS_BUILD_SHM_COMM=1) leaves no file there


def _rank_env(
    port: int, hang_dump_s: float, log_dir: Path, extra: dict[str, str] | None
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _RANK_VARS and not k.startswith(_RANK_PREFIXES)
    }
    shim_dir = log_dir / "bin"
    shim_dir.mkdir(exist_ok=True)
    shim = shim_dir / "hostname"
    shim.write_text(_SHIM.format(real=shutil.which("hostname") or "/bin/hostname"))
    shim.chmod(0o755)
    # The venv's bin first: its launchers, and the same ninja for every JIT build (two ninja
    # versions disagree on the .ninja_log version, so each switch rebuilds DeepSpeed's ops).
    path = [str(shim_dir), str(Path(sys.executable).parent), env.get("PATH", "")]
    pythonpath = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        PATH=os.pathsep.join(path),
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONUNBUFFERED="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        NATSCALE_HANG_DUMP_S=f"{hang_dump_s:g}",
        **{_MARKER: f"{os.getpid()}-{port}"},
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    env.update(extra or {})
    return env


def _wait(procs: list[subprocess.Popen], *, deadline: float, grace_s: float = 20.0) -> bool:
    """Wait for every launcher; True if the deadline passed first.

    Once one launcher fails, the others (nossh: the other node) get ``grace_s`` to notice.
    """
    failed_at = None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if now >= deadline:
            return True
        if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
            failed_at = now
        if failed_at is not None and now - failed_at > grace_s:
            return False
        time.sleep(0.2)
    return False


def _stop(procs: list[subprocess.Popen], marker: str, dump_wait_s: float = 3.0) -> None:
    """Dump the stacks of this run's surviving ranks (SIGUSR1, see natscale.train.dist), then
    kill every process of the run, found by the marker variable every one of them inherits (a
    launcher's tree breaks apart when it dies, and torchrun puts workers in their own sessions).
    """
    alive = _run_processes(marker)
    ranks = [proc for proc, env in alive if _is_rank(env) and not _is_rank(_environ(_parent(proc)))]
    for proc in ranks:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGUSR1)
    if ranks:
        time.sleep(dump_wait_s)
    # SIGKILL is asynchronous, and a process may fork between a scan and the kill: kill and
    # re-scan until no process of the run is left (zombies have no readable environ, so a
    # killed-but-unreaped process no longer matches).
    deadline = time.monotonic() + 15.0
    while alive and time.monotonic() < deadline:
        for proc, _ in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        time.sleep(0.1)
        alive = _run_processes(marker)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=30)


def _run_processes(marker: str) -> list[tuple[psutil.Process, dict[str, str]]]:
    found = []
    for proc in psutil.process_iter():
        env = _environ(proc)
        if env.get(_MARKER) == marker:
            found.append((proc, env))
    return found


def _environ(proc: psutil.Process | None) -> dict[str, str]:
    try:
        return proc.environ() if proc is not None else {}
    except psutil.Error:  # gone, a zombie, or not ours
        return {}


def _is_rank(env: dict[str, str]) -> bool:
    return "RANK" in env or "OMPI_COMM_WORLD_RANK" in env


def _parent(proc: psutil.Process) -> psutil.Process | None:
    try:
        return proc.parent()
    except psutil.Error:
        return None


def _remove_shm(port: int) -> list[str]:
    # deepspeed_allreduce_buffer_{uid}_{master_addr}_{master_port}_{rank}; our port is unique
    paths = sorted(
        glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*")
    )
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return paths
