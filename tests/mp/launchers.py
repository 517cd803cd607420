"""How each launch mode is invoked and where it leaves each rank's log (used by harness.py).

Per-rank logs come from the launchers' own features:
  torchrun   --log-dir D --redirects 3  -> D/<run id>/attempt_<n>/<local rank>/std{out,err}.log
  deepspeed  --enable_each_rank_log D   -> D/<timestamp>_rank<global rank>.log (both streams)
  mpirun     --output-filename D        -> D/1/rank.<global rank>/std{out,err}
The natscale launchers use the same features: ``launch`` (``natscale launch --backend no-ssh``,
one per node) and ``launch-once`` (one ``natscale launch``, e.g. pdsh) pass ``--rank-logs`` to
deepspeed's ``--enable_each_rank_log`` (openmpi ignores it: add ``--output-filename D/mpi`` to
``--launcher-args``), and ``mpi-script`` (``launcher/mpi/run.sh``) adds ``--output-filename``
through ``MPIRUN_ARGS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

LAUNCH_MODES = (
    "torchrun", "deepspeed", "mpirun", "nossh", "single", "launch", "launch-once", "mpi-script",
)  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parents[2]


def entry_argv(entry: str) -> tuple[str, str]:
    """("module", name) or ("script", absolute path)."""
    if entry == "natscale":
        return "module", "natscale.cli"
    if entry.endswith(".py"):
        path = Path(entry).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"entry script {entry} does not exist")
        return "script", str(path)
    return "module", entry


def _tool(name: str, module: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def commands(
    launcher: str,
    nprocs: int,
    nodes: int,
    port: int,
    entry: tuple[str, str],
    args: list[str],
    log_dir: Path,
) -> list[list[str]]:
    """One command per launcher process (``nossh``: one per node)."""
    kind, target = entry
    master = ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    if launcher == "single":
        if target == "natscale.cli":
            return [_tool("natscale", "natscale.cli") + args]
        return [[sys.executable, "-u", *(["-m", target] if kind == "module" else [target]), *args]]
    if launcher == "torchrun":
        torchrun = _tool("torchrun", "torch.distributed.run")
        logs = ["--log-dir", str(log_dir / "torchrun"), "--redirects", "3"]
        run = ["-m", target] if kind == "module" else [target]
        return [
            [
                *torchrun,
                "--nnodes",
                "1",
                "--nproc_per_node",
                str(nprocs),
                *master,
                *logs,
                *run,
                *args,
            ]
        ]
    if launcher == "launch-once":  # one `natscale launch`; args: --backend, --hostfile, --, ...
        natscale = [*_tool("natscale", "natscale.cli"), "launch"]
        where = ["--master-addr", "127.0.0.1", "--master-port", str(port)]
        return [[*natscale, *where, "--rank-logs", str(log_dir / "ranks"), *args]]
    if launcher == "mpi-script":  # launcher/mpi/run.sh HOSTFILE ARGS (MPIRUN_ARGS: run_distributed)
        hostfile = log_dir / "hostfile"
        hostfile.write_text(f"localhost slots={nprocs}\n")
        return [["bash", str(REPO_ROOT / "launcher" / "mpi" / "run.sh"), str(hostfile), *args]]
    if launcher == "mpirun":
        mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]
        mca = ["--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo"]
        logs = ["--output-filename", str(log_dir / "mpi")]
        py = [sys.executable, "-u", *(["-m", target] if kind == "module" else [target])]
        return [[*mpirun, *mca, "-np", str(nprocs), *logs, *py, *args]]
    deepspeed = _tool("deepspeed", "deepspeed.launcher.runner")
    logs = ["--enable_each_rank_log", str(log_dir / "ranks")]
    run = ["--module", target] if kind == "module" else [target]
    if launcher == "deepspeed":
        return [[*deepspeed, "--num_accelerators", str(nprocs), *master, *logs, *run, *args]]
    if launcher in ("nossh", "launch"):
        hostfile = log_dir / "hostfile"  # the names are labels: every "node" is this machine
        hostfile.write_text("".join(f"node{i} slots={nprocs // nodes}\n" for i in range(nodes)))
        if launcher == "launch":  # args: `natscale launch` options (overriding these), --, command
            natscale = [*_tool("natscale", "natscale.cli"), "launch", "--backend", "no-ssh"]
            where = ["--hostfile", str(hostfile), "--master-addr", "127.0.0.1"]
            where += ["--master-port", str(port), "--rank-logs", str(log_dir / "ranks")]
            return [[*natscale, *where, "--node-rank", str(i), *args] for i in range(nodes)]
        nossh = ["--hostfile", str(hostfile), "--no_ssh"]
        return [
            [*deepspeed, *nossh, "--node_rank", str(i), *master, *logs, *run, *args]
            for i in range(nodes)
        ]
    raise ValueError(f"unknown launcher {launcher!r}; one of {LAUNCH_MODES}")


def rank_logs_by_rank(launcher: str, log_dir: Path) -> dict[int, str]:
    """Global rank -> its log (stdout, then stderr where the launcher keeps them apart)."""
    logs: dict[int, str] = {}
    if launcher == "single":  # the process is its own launcher
        logs[0] = (log_dir / "launcher0.log").read_text(errors="replace")
    elif launcher in ("deepspeed", "nossh", "launch") or (
        launcher == "launch-once" and any((log_dir / "ranks").glob("*_rank*.log"))
    ):  # ranks/<timestamp>_rank<R>.log
        for path in sorted((log_dir / "ranks").glob("*_rank*.log")):
            logs[int(path.stem.rsplit("_rank", 1)[1])] = path.read_text(errors="replace")
    elif launcher == "torchrun":  # torchrun/<run id>/attempt_<n>/<local rank>/std{out,err}.log
        for rank_dir in sorted((log_dir / "torchrun").glob("*/attempt_*/*")):
            logs[int(rank_dir.name)] = _join_streams(
                rank_dir / "stdout.log", rank_dir / "stderr.log"
            )
    elif launcher in ("mpirun", "mpi-script", "launch-once"):  # mpi/1/rank.<R>/std{out,err}
        for rank_dir in sorted((log_dir / "mpi").glob("*/rank.*")):
            logs[int(rank_dir.name.split(".", 1)[1])] = _join_streams(
                rank_dir / "stdout", rank_dir / "stderr"
            )
    return logs


def _join_streams(stdout: Path, stderr: Path) -> str:
    out = stdout.read_text(errors="replace") if stdout.exists() else ""
    err = stderr.read_text(errors="replace") if stderr.exists() else ""
    return f"{out}\n----- stderr -----\n{err}" if err else out
