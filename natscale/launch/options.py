"""The options of one ``natscale launch`` (the CLI fills them; the library never parses argv)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Backend = Literal["local", "pdsh", "openmpi", "slurm", "no-ssh"]
BACKENDS: tuple[Backend, ...] = ("pdsh", "openmpi", "slurm", "no-ssh")
DEFAULT_MASTER_PORT = 29500  # DeepSpeed's (and torch.distributed's) default


@dataclass
class LaunchOptions:
    """What to launch where.

    backend: ``local`` (one node, no hostfile), ``pdsh`` (DeepSpeed's default: ssh to every
    host), ``openmpi`` (``mpirun``), ``slurm`` (``srun``) or ``no-ssh`` (run the same launch on
    every node yourself, each with its ``node_rank``). ``command`` is the natscale subcommand
    every rank runs (``train``, or ``selftest`` to check the setup) and ``command_args`` its
    arguments, e.g. ``["run.yaml", "--set", "train.lr=2e-5"]``.
    """

    command_args: list[str]
    command: Literal["train", "selftest"] = "train"
    backend: Backend = "local"
    hostfile: str | None = None
    include: str = ""
    exclude: str = ""
    nodes: int | None = None
    gpus_per_node: int | None = None
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT
    ssh_port: int | None = None
    ifname: str | None = None
    env: list[str] = field(default_factory=list)  # KEY=VALUE, or KEY to copy from this node
    launcher_args: str = ""  # passed to pdsh / mpirun / srun (DeepSpeed's --launcher_args)
    deepspeed_args: str = ""  # more flags for the deepspeed runner, e.g. "--bind_cores_to_rank"
    rank_logs: str | None = None  # one log file per rank (DeepSpeed's --enable_each_rank_log)

    def cli_argv(self) -> list[str]:
        """These options as a ``natscale launch`` command line (what to type on another node)."""
        argv = ["natscale", "launch"]
        if self.backend != "local":  # local is what no --backend means on one node, not a choice
            argv += ["--backend", self.backend]
        flags = (
            ("--hostfile", self.hostfile),
            ("--include", self.include or None),
            ("--exclude", self.exclude or None),
            ("--nodes", self.nodes),
            ("--gpus-per-node", self.gpus_per_node),
            ("--node-rank", self.node_rank),
            ("--master-addr", self.master_addr),
            ("--master-port", self.master_port),
            ("--ssh-port", self.ssh_port),
            ("--ifname", self.ifname),
            ("--launcher-args", self.launcher_args or None),
            ("--deepspeed-args", self.deepspeed_args or None),
            ("--rank-logs", self.rank_logs),
        )
        for flag, value in (*flags, *(("--env", item) for item in self.env)):
            if value is None:
                continue
            text = str(value)
            # argparse reads a separate word starting with '-' as an option, not as the value
            argv += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
        if self.command == "selftest":
            argv.append("--selftest")
        return [*argv, "--", *self.command_args]
