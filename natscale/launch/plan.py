"""A launch, fully worked out before anything starts: the ``deepspeed`` command this node runs,
the environment every rank gets, and the command each node ends up running.

The per-node commands come from DeepSpeed's own runner classes (``PDSHRunner``,
``OpenMPIRunner``, ``SlurmRunner``) fed with the same arguments the real ``deepspeed`` call
parses, so a dry run shows what DeepSpeed will execute rather than a guess. Only the short local
branch of ``deepspeed.launcher.runner.main`` (single node and ``--no_ssh``) is mirrored here.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from natscale.launch.envfile import (
    EnvSpec,
    build_env,
    check_env_file_location,
    check_file_values,
    env_file_path,
    env_file_text,
    parse_env_lines,
    read_user_env_file,
)
from natscale.launch.findings import Finding, errors
from natscale.launch.hostfile import Hostfile, read_hostfile
from natscale.launch.options import LaunchOptions
from natscale.launch.resources import Resources, check_backend, check_filters, rank_ranges, select

ENTRY_SCRIPT = Path(__file__).with_name(
    "entry.py"
)  # slurm: DeepSpeed's srun runner has no --module
_DS_BACKEND = {"pdsh": "pdsh", "openmpi": "openmpi", "slurm": "slurm"}


@dataclass
class NodeRun:
    """What runs on one node: ``argv`` (or, for pdsh, the remote ``shell`` line), and for
    ``deepspeed`` commands the ``deepspeed.launcher.launch`` command they start (``launch_argv``),
    which in turn starts one process per slot."""

    index: int
    host: str
    slots: list[int]
    ranks: range
    argv: list[str] | None = None
    shell: str | None = None
    launch_argv: list[str] | None = None
    per_rank: str = ""  # how each rank learns its identity


@dataclass
class LaunchPlan:
    options: LaunchOptions
    hostfile: Hostfile | None
    active: Resources
    master_addr: str
    deepspeed_argv: list[str]  # what this node runs
    env: EnvSpec  # for every rank
    env_file: (
        Path | None
    )  # .deepspeed_env to write (multi-node runners), or None (env set directly)
    spawn_argv: list[str] | None = None  # pdsh / mpirun / srun command DeepSpeed runs here
    nodes: list[NodeRun] = field(default_factory=list)
    # pdsh / openmpi / slurm: every variable DeepSpeed's runner exports to the ranks (its own
    # PYTHON*/MLFLOW*/UCX*/MV2* copies, ~/.deepspeed_env, then plan.env)
    exports: dict[str, str] = field(default_factory=dict)
    cwd: Path = field(default_factory=Path.cwd)  # where the launch starts (pdsh: cd there)

    @property
    def world_size(self) -> int:
        return sum(len(s) for s in self.active.values())

    def launcher_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment of the ``deepspeed`` process this node starts."""
        env = dict(environ)
        if self.env_file is None:  # local / no-ssh: DeepSpeed passes its own environment on
            env.update(self.env.values)
        else:  # the runner itself needs Python's directory first (pdsh, mpirun, srun lookups)
            env["PATH"] = self.env.values["PATH"]
        return env


def deepspeed_exe() -> list[str]:
    """The ``deepspeed`` launcher of this Python environment."""
    script = Path(sys.executable).with_name("deepspeed")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deepspeed.launcher.runner"]


def build_plan(
    opts: LaunchOptions, environ: Mapping[str, str], cwd: Path
) -> tuple[LaunchPlan | None, list[Finding]]:
    """Work out the launch; (None, findings) when an error makes it impossible."""
    findings: list[Finding] = []
    hostfile, active = _resources(opts, environ, findings)
    if active is None:
        return None, findings
    if opts.backend == "slurm" and not opts.master_addr:
        slurm = _slurm_order(opts, active, environ, hostfile, findings)
        if slurm is None:
            return None, findings
        active, master = slurm
    else:
        master = opts.master_addr or (
            next(iter(active)) if opts.backend != "local" else "127.0.0.1"
        )
    if opts.backend == "local" and master not in ("127.0.0.1", "localhost"):
        findings.append(
            Finding("warning", "a single-node launch always uses 127.0.0.1", "--master-addr")
        )
        master = "127.0.0.1"
    env_path = env_file_path(environ, cwd) if opts.backend in _DS_BACKEND else None
    env = _env(opts, environ, env_path, master, findings)
    if env is None:
        return None, findings
    plan = LaunchPlan(
        options=opts,
        hostfile=hostfile,
        active=active,
        master_addr=master,
        deepspeed_argv=deepspeed_exe() + _deepspeed_args(opts, master, len(active)),
        env=env,
        env_file=env_path,
        cwd=cwd,
    )
    _add_node_runs(plan, environ)
    return plan, findings


def _resources(
    opts: LaunchOptions, environ: Mapping[str, str], findings: list[Finding]
) -> tuple[Hostfile | None, Resources | None]:
    """(hostfile, active resources); active is None when an error was found."""
    if opts.backend == "local":
        if (
            opts.hostfile
            or opts.include
            or opts.exclude
            or opts.nodes
            or opts.node_rank is not None
        ):
            findings.append(
                Finding(
                    "error",
                    "--hostfile/--include/--exclude/--nodes/--node-rank need a multi-node "
                    "--backend (pdsh, openmpi, slurm or no-ssh)",
                )
            )
            return None, None
        slots = _local_slots(opts, environ, findings)
        return None, None if slots is None else OrderedDict(localhost=slots)
    if not opts.hostfile:
        findings.append(Finding("error", f"the {opts.backend} backend needs --hostfile PATH"))
        return None, None
    hostfile, found = read_hostfile(opts.hostfile)
    findings += found
    if hostfile is None or errors(findings):
        return hostfile, None
    findings += check_filters(opts, hostfile)
    if errors(findings):
        return hostfile, None
    active = select(opts, hostfile)
    if not any(active.values()):
        flag = "--exclude" if opts.exclude else "--include/--nodes/--gpus-per-node"
        findings.append(
            Finding(
                "error",
                f"this leaves no host and no slot of {hostfile.path} to launch on; "
                "exclude fewer hosts or slots",
                flag,
            )
        )
        return hostfile, None
    findings += check_backend(opts, hostfile, active)
    return hostfile, None if errors(findings) else active


def _slurm_order(
    opts: LaunchOptions,
    active: Resources,
    environ: Mapping[str, str],
    hostfile: Hostfile | None,
    findings: list[Finding],
) -> tuple[Resources, str] | None:
    """(active hosts in SLURM's order, the master) for the slurm backend; None after an error.

    srun ignores the hostfile's order: it numbers the tasks (SLURM_PROCID) in the job's node
    order, so rank 0, which listens on MASTER_ADDR, runs on the first node in that order
    (``scontrol show hostnames $SLURM_JOB_NODELIST``), not on the hostfile's first line.
    """
    first = next(iter(active))
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        findings.append(
            Finding(
                "warning",
                f"not inside a SLURM allocation (no SLURM_JOB_NODELIST), so the master is the "
                f"hostfile's first host, {first}; srun starts rank 0 on the first node in SLURM's "
                "order, whatever the hostfile's order. Launch inside the allocation (salloc), "
                "where natscale takes the master from SLURM's order, or give --master-addr",
                "--backend slurm",
            )
        )
        return active, first
    order = _slurm_hostnames(nodelist, environ)
    if isinstance(order, str):
        findings.append(Finding("error", order, "--backend slurm"))
        return None
    outside = [h for h in active if h not in order]
    if outside:
        where = hostfile.where(outside[0]) if hostfile else outside[0]
        findings.append(
            Finding(
                "error",
                f"{', '.join(outside)} not among this job's nodes ({', '.join(order)}, from "
                f"SLURM_JOB_NODELIST={nodelist}): srun runs the ranks on the job's nodes, in "
                "SLURM's order. List them in the hostfile by the names `scontrol show hostnames` "
                "gives, or give --master-addr (the address of the job's first node)",
                where,
            )
        )
        return None
    in_order = OrderedDict((h, active[h]) for h in sorted(active, key=order.index))
    # with --include/--exclude srun gets --nodelist (the active hosts), else the whole job's nodes
    master = next(iter(in_order)) if opts.include or opts.exclude else order[0]
    if master != first:
        findings.append(
            Finding(
                "note",
                f"master {master}: srun starts rank 0 on the first node in SLURM's order "
                f"({', '.join(order)}), not on the hostfile's first host ({first})",
                "--backend slurm",
            )
        )
    return in_order, master


def _slurm_hostnames(nodelist: str, environ: Mapping[str, str]) -> list[str] | str:
    """The job's hosts in SLURM's order (``scontrol show hostnames``), or why they are unknown."""
    scontrol = shutil.which("scontrol", path=environ.get("PATH"))
    why = "scontrol is not on PATH"
    if scontrol is not None:
        try:
            proc = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"scontrol failed: {exc}"
        else:
            hosts = proc.stdout.split()
            if proc.returncode == 0 and hosts:
                return hosts
            lines = proc.stderr.strip().splitlines()
            why = f"scontrol show hostnames failed ({lines[-1] if lines else proc.returncode})"
    return (
        f"cannot list this job's nodes in SLURM's order (SLURM_JOB_NODELIST={nodelist}): {why}. "
        "srun starts rank 0 on the first of them, which must be the master: run on a node with "
        "the SLURM client, or give --master-addr (the address of the job's first node)"
    )


def _env(
    opts: LaunchOptions,
    environ: Mapping[str, str],
    env_path: Path | None,
    master: str,
    findings: list[Finding],
) -> EnvSpec | None:
    try:
        if env_path is not None:
            check_env_file_location(env_path, environ)
        user_file = read_user_env_file(env_path) if env_path else {}
        env = build_env(
            environ,
            user_file=user_file,
            ifname=opts.ifname,
            explicit=opts.env,
            master_addr=master,
            master_port=opts.master_port,
        )
        if env_path is not None:
            check_file_values(env, env_path)
    except (OSError, ValueError) as exc:
        findings.append(Finding("error", str(exc)))
        return None
    if user_file:
        note = f"keeping {len(user_file)} variable(s) of a {env_path.name} not written by natscale"
        findings.append(Finding("note", note, str(env_path)))
    return env


def _local_slots(
    opts: LaunchOptions, environ: Mapping[str, str], findings: list[Finding]
) -> list[int] | None:
    """The device ids of a single-node launch, as deepspeed's runner picks them (None: an error
    was added to ``findings``)."""
    from deepspeed.accelerator import get_accelerator

    visible_var = get_accelerator().visible_devices_envs()[0]
    visible = environ.get(visible_var, "")
    if opts.gpus_per_node:
        if visible:
            findings.append(
                Finding(
                    "warning",
                    f"deepspeed ignores {visible_var}={visible} when the number of devices is "
                    f"given: it uses devices 0..{opts.gpus_per_node - 1}. Drop --gpus-per-node "
                    f"to use exactly {visible_var}",
                    "--gpus-per-node",
                )
            )
        return list(range(opts.gpus_per_node))
    if visible:  # deepspeed turns it into --include localhost:<ids>
        ids = [i.strip() for i in visible.split(",") if i.strip()]
        if not all(i.isdigit() for i in ids):
            findings.append(
                Finding(
                    "error",
                    f"{visible_var}={visible}: deepspeed's launcher takes only device numbers "
                    f"(it turns them into --include localhost:{visible}), not UUIDs or names. Set "
                    f"{visible_var} to numbers (nvidia-smi -L lists them), or give "
                    "--gpus-per-node N to use devices 0..N-1",
                )
            )
            return None
        return [int(i) for i in ids]
    return list(range(max(1, get_accelerator().device_count())))


def _deepspeed_args(opts: LaunchOptions, master: str, num_nodes: int) -> list[str]:
    args: list[str] = []
    if opts.backend == "local":
        if opts.gpus_per_node:
            args += ["--num_gpus", str(opts.gpus_per_node)]
    else:
        args += ["--hostfile", str(opts.hostfile)]
        if opts.include:
            args += ["--include", opts.include]
        if opts.exclude:
            args += ["--exclude", opts.exclude]
        if opts.nodes is not None:
            args += ["--num_nodes", str(opts.nodes)]
        if opts.gpus_per_node is not None:
            args += ["--num_gpus", str(opts.gpus_per_node)]
    args += ["--master_addr", master, "--master_port", str(opts.master_port)]
    if opts.backend == "no-ssh":
        args += ["--no_ssh", "--node_rank", str(opts.node_rank)]
    elif opts.backend in _DS_BACKEND:
        args += ["--launcher", _DS_BACKEND[opts.backend]]
        if opts.backend != "pdsh":
            # mpirun/srun place the ranks themselves: no ssh check of the first host, and the
            # chosen backend even for one host (DeepSpeed would otherwise start it locally)
            args += ["--no_ssh_check", "--force_multi"]
        elif num_nodes == 1:
            args += ["--force_multi"]  # the one host may be another machine: reach it over ssh
        if opts.ssh_port is not None:
            args += ["--ssh_port", str(opts.ssh_port)]
        launcher_args = _launcher_args(opts)
        if launcher_args:
            args += [f"--launcher_args={launcher_args}"]  # one word may start with -
        venv_activate = Path(sys.executable).with_name("activate")
        if opts.backend == "pdsh" and venv_activate.is_file():
            args += ["--venv_script", str(venv_activate)]
    if opts.rank_logs:
        args += ["--enable_each_rank_log", opts.rank_logs]
    args += shlex.split(opts.deepspeed_args)
    if opts.backend == "slurm":
        return [*args, str(ENTRY_SCRIPT), opts.command, *opts.command_args]
    return [*args, "--module", "natscale.cli", opts.command, *opts.command_args]


def _launcher_args(opts: LaunchOptions) -> str:
    """``--launcher_args``: the user's, plus Open MPI's TCP interface when --ifname names one."""
    words = shlex.split(opts.launcher_args)
    if opts.backend == "openmpi" and opts.ifname:
        for key in ("btl_tcp_if_include", "oob_tcp_if_include"):
            if not _has_mca(words, key):
                words += ["--mca", key, opts.ifname]
    return shlex.join(words)


def _has_mca(words: list[str], key: str) -> bool:
    return any(w in ("--mca", "-mca") and nxt == key for w, nxt in itertools.pairwise(words))


def _add_node_runs(plan: LaunchPlan, environ: Mapping[str, str]) -> None:
    """Fill ``plan.nodes`` (and ``spawn_argv``) with what DeepSpeed will run on each node."""
    from deepspeed.launcher.runner import encode_world_info, parse_args

    opts = plan.options
    args = parse_args(plan.deepspeed_argv[_exe_len(plan.deepspeed_argv) :])
    world_info = encode_world_info(plan.active)
    plan.nodes = [NodeRun(i, h, s, r) for i, (h, s, r) in enumerate(rank_ranges(plan.active))]
    if opts.backend in ("local", "no-ssh"):
        for node in plan.nodes:
            rank = node.index if opts.backend == "no-ssh" else None
            node.argv = _with_node_rank(plan.deepspeed_argv, rank)
            node.launch_argv = _local_launch(args, world_info, rank)
            node.per_rank = "deepspeed.launcher.launch sets RANK, LOCAL_RANK, WORLD_SIZE"
        return
    runner = _runner(opts.backend, args, world_info, plan.hostfile)
    launcher_env = plan.launcher_env(environ)
    plan.exports = _deepspeed_exports(launcher_env, plan.env)
    for key, value in plan.exports.items():
        runner.add_export(key, value)
    if opts.backend == "pdsh":
        cmd, _kill, _env = runner.get_cmd(dict(launcher_env), plan.active)
        remote = cmd[_pdsh_len(cmd, opts) :]
        plan.spawn_argv = cmd
        for node in plan.nodes:
            node.shell = " ".join(remote).replace("%n", str(node.index))
            node.per_rank = "deepspeed.launcher.launch sets RANK, LOCAL_RANK, WORLD_SIZE"
        return
    cmd = runner.get_cmd(dict(launcher_env), plan.active)
    plan.spawn_argv = cmd
    tail = cmd[cmd.index(sys.executable) :]
    per_rank = {
        "openmpi": "natscale maps OMPI_COMM_WORLD_RANK/_SIZE/_LOCAL_RANK",
        "slurm": "natscale maps SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID",
    }[opts.backend]
    for node in plan.nodes:
        node.argv = tail
        node.per_rank = per_rank


def _with_node_rank(argv: list[str], rank: int | None) -> list[str]:
    if rank is None:
        return list(argv)
    i = argv.index("--node_rank")
    return [*argv[: i + 1], str(rank), *argv[i + 2 :]]


def _exe_len(argv: list[str]) -> int:
    return 1 if len(argv) < 2 or argv[1] != "-m" else 3


def _pdsh_len(cmd: list[str], opts: LaunchOptions) -> int:
    return 6 + len(shlex.split(opts.launcher_args))  # pdsh -S -f 1024 -w HOSTS [launcher args]


def _runner(backend: str, args, world_info: str, hostfile: Hostfile | None):
    from deepspeed.launcher.multinode_runner import OpenMPIRunner, PDSHRunner, SlurmRunner

    if backend == "pdsh":
        return PDSHRunner(args, world_info)
    pool = hostfile.resource_pool() if hostfile else {}
    return (OpenMPIRunner if backend == "openmpi" else SlurmRunner)(args, world_info, pool)


def launch_env_text(launcher_env: Mapping[str, str], env: EnvSpec) -> str:
    """The env file lines DeepSpeed's runner exports for this launch, in its order: those of
    ``~/.deepspeed_env`` (``~/$DS_ENV_FILE``), then those of the ``./.deepspeed_env`` natscale
    writes. :func:`natscale.launch.execute.run_plan` hands the runner this text as a file of the
    launch's own (``DS_ENV_FILE``): a second launch from the same folder rewrites
    ``./.deepspeed_env`` with its own master address while the first runner may not have read it.
    """
    name = launcher_env.get("DS_ENV_FILE", ".deepspeed_env")
    home_file = Path(os.path.expanduser("~")) / name
    text = ""
    if home_file.is_file() and home_file.resolve() != (Path.cwd() / name).resolve():
        home = parse_env_lines(home_file.read_text(encoding="utf-8"), str(home_file))
        text = "".join(f"{key}={value}\n" for key, value in home.items())
    return text + env_file_text(env)


def _deepspeed_exports(launcher_env: Mapping[str, str], env: EnvSpec) -> dict[str, str]:
    """What ``deepspeed.launcher.runner.main`` exports to remote ranks, in its order: variables
    with its prefixes (PYTHONPATH with the working directory first), ``~/.deepspeed_env``, then
    the ``./.deepspeed_env`` natscale writes (:func:`launch_env_text`).
    """
    from deepspeed.accelerator import get_accelerator
    from deepspeed.launcher.runner import EXPORT_ENVS

    env_copy = dict(launcher_env)
    cwd = os.path.abspath(".")
    env_copy["PYTHONPATH"] = (
        f"{cwd}:{env_copy['PYTHONPATH']}" if env_copy.get("PYTHONPATH") else cwd
    )
    prefixes = tuple(EXPORT_ENVS + get_accelerator().export_envs())
    exports = {k: v for k, v in env_copy.items() if k.startswith(prefixes)}
    exports.update(parse_env_lines(launch_env_text(launcher_env, env), ".deepspeed_env"))
    return exports


def _local_launch(args, world_info: str, node_rank: int | None) -> list[str]:
    """The ``deepspeed.launcher.launch`` command of runner.main's local branch (one node)."""
    cmd = [
        sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
        f"--master_addr={args.master_addr}", f"--master_port={args.master_port}",
    ]  # fmt: skip
    if node_rank is not None:
        cmd.append(f"--node_rank={node_rank}")
    for flag in ("no_python", "module", "no_local_rank"):
        if getattr(args, flag):
            cmd.append(f"--{flag}")
    if args.enable_each_rank_log:
        cmd.append(f"--enable_each_rank_log={args.enable_each_rank_log}")
    if args.bind_cores_to_rank:
        cmd.append("--bind_cores_to_rank")
    if args.bind_core_list is not None:
        cmd.append(f"--bind_core_list={args.bind_core_list}")
    if args.quiet:
        cmd.append("--quiet")
    cmd.append(f"--log_level={'error' if args.quiet else args.log_level}")
    return [*cmd, args.user_script, *args.user_args]
