"""Checks before a launch starts anything, each with a message that says what to do.

``static_checks`` look only at the plan and this node's environment variables (deterministic;
a dry run runs them). ``probe_checks`` touch the system: tools on PATH, ssh to every pdsh host,
whether the master port is free, which network interfaces and devices this node has
(``natscale launch --check`` and every real launch run them too).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from natscale.launch.findings import Finding
from natscale.launch.hostfile import LOCAL_NAMES
from natscale.launch.plan import LaunchPlan

SSH_TIMEOUT_S = 8
# DeepSpeed's MultiNodeRunner.add_export wraps such values in double quotes (without escaping
# what is inside): mpirun -x and srun --export take the quotes literally, and pdsh's remote shell
# still expands " $ ` \ within them
_QUOTED_BY_DEEPSPEED = re.compile(r"[^\w@%+=:,./-]")
# special inside double quotes (pdsh's remote shell), and line breaks; in arguments DeepSpeed
# escapes " itself
_SPECIAL_IN_QUOTES = re.compile(r'["$`\\\n\r]')
_SPECIAL_IN_QUOTED_ARG = re.compile(r"[$`\\\n\r]")


_REMOTE_BACKENDS = ("pdsh", "openmpi", "slurm")  # the ranks run on the hostfile's nodes


def is_cpu_run() -> bool:
    """Whether this node's DeepSpeed accelerator is the CPU."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def ranks_on_cpu(plan: LaunchPlan) -> bool | None:
    """Whether the ranks run on CPU: DS_ACCELERATOR as the ranks get it, else this node's
    accelerator when this node runs ranks (no-ssh, local) or has one (a GPU launching node of a
    GPU cluster); None when it cannot tell (a remote backend started from a node without one,
    e.g. a login node launching onto GPU nodes)."""
    accelerator = plan.env.values.get("DS_ACCELERATOR")
    if accelerator:
        return accelerator == "cpu"
    here = is_cpu_run()
    return None if here and plan.options.backend in _REMOTE_BACKENDS else here


def static_checks(plan: LaunchPlan, environ: Mapping[str, str]) -> list[Finding]:
    findings = _interface_checks(plan) + _master_checks(plan)
    backend = plan.options.backend
    if backend == "openmpi":
        findings += _openmpi_checks(plan, environ)
    if backend in ("openmpi", "slurm"):
        findings += _export_checks(plan)
    if backend == "pdsh":
        findings += _pdsh_shell_checks(plan)
    return findings


def _interface_checks(plan: LaunchPlan) -> list[Finding]:
    if len(plan.active) < 2:
        return []
    env = plan.env.values
    on_cpu = ranks_on_cpu(plan)
    if on_cpu is None:
        missing = [k for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if k not in env]
        if not missing:
            return []
        return [
            Finding(
                "warning",
                f"{' and '.join(missing)} not set, and this node has no accelerator, so whether "
                f"the ranks on the {plan.options.backend} nodes use gloo (CPU) or NCCL (GPU) is "
                "unknown here (set DS_ACCELERATOR=cpu or cuda, or --env DS_ACCELERATOR=..., to "
                "say). gloo without GLOO_SOCKET_IFNAME binds to the address the hostname resolves "
                "to, often a loopback one ('Connection refused' on the other nodes); NCCL picks an "
                "interface itself and may pick one the other nodes cannot reach. Pass --ifname "
                "IFACE (the interface the nodes share)",
            )
        ]
    if on_cpu and "GLOO_SOCKET_IFNAME" not in env:
        return [
            Finding(
                "error",
                "a multi-node CPU run without GLOO_SOCKET_IFNAME: gloo binds to the address "
                "this node's hostname resolves to, often 127.0.1.1 or another loopback "
                "address, and the other nodes get 'Connection refused'. Pass --ifname IFACE "
                f"(the interface that reaches the other nodes; here: {_interfaces()})",
            )
        ]
    if not on_cpu and "NCCL_SOCKET_IFNAME" not in env:
        return [
            Finding(
                "warning",
                "NCCL_SOCKET_IFNAME is not set: NCCL picks an interface itself and may pick one "
                "the other nodes cannot reach (docker0, a management network) and hang at the "
                f"first collective. Pass --ifname IFACE if it does (here: {_interfaces()})",
            )
        ]
    return []


def _master_checks(plan: LaunchPlan) -> list[Finding]:
    hosts = list(plan.active)
    if len(hosts) > 1 and _is_loopback(plan.master_addr) and not all(map(_is_loopback, hosts)):
        return [
            Finding(
                "warning",
                f"master address {plan.master_addr} is loopback: that only works when every "
                "'node' is this machine. On a real cluster give the first node's address",
                "--master-addr",
            )
        ]
    return []


def _openmpi_checks(plan: LaunchPlan, environ: Mapping[str, str]) -> list[Finding]:
    findings = []
    words = plan.options.launcher_args.split()
    if (
        os.geteuid() == 0
        and "--allow-run-as-root" not in words
        and not (
            environ.get("OMPI_ALLOW_RUN_AS_ROOT") and environ.get("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")
        )
    ):
        findings.append(
            Finding(
                "error",
                "mpirun refuses to run as root: add --launcher-args '--allow-run-as-root' (or "
                "set OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1), or launch as a user",
                "--backend openmpi",
            )
        )
    if any(a in ("--mca", "-mca") and b == "btl" for a, b in itertools.pairwise(words)):
        findings.append(
            Finding(
                "error",
                "DeepSpeed already passes '--mca btl ^openib'; mpirun fails when an MCA "
                "parameter is given twice. Remove '--mca btl ...' from --launcher-args",
                "--launcher-args",
            )
        )
    if "btl_tcp_if_include" not in plan.options.launcher_args and not plan.options.ifname:
        findings.append(
            Finding(
                "warning",
                "without --ifname, DeepSpeed tells mpirun '--mca btl_tcp_if_include eth0'; if "
                "the nodes reach each other over another interface, pass --ifname IFACE",
                "--backend openmpi",
            )
        )
    return findings


def _export_source(plan: LaunchPlan, key: str) -> str:
    if key in plan.env.source:
        return plan.env.source[key]
    return "exported by DeepSpeed itself: this node's PYTHON*/MLFLOW*/UCX*/MV2* or ~/.deepspeed_env"


def _export_checks(plan: LaunchPlan) -> list[Finding]:
    """Every variable DeepSpeed exports (plan.exports), not only natscale's own."""
    findings = []
    for key, value in sorted(plan.exports.items()):
        value = value.strip()  # as add_export does
        if _QUOTED_BY_DEEPSPEED.search(value):
            findings.append(
                Finding(
                    "error",
                    f"{key}={value!r} ({_export_source(plan, key)}): DeepSpeed quotes values with "
                    f"spaces or shell characters, and {plan.options.backend} passes the quotes on "
                    "literally. Simplify the value, or unset it for the launch",
                    "environment",
                )
            )
        elif plan.options.backend == "slurm" and "," in value:
            findings.append(
                Finding(
                    "error",
                    f"{key}={value!r} ({_export_source(plan, key)}): srun "
                    "--export=ALL,KEY=VALUE,... splits values at commas. Simplify the value, or "
                    "unset it for the launch",
                    "environment",
                )
            )
    return findings


def _pdsh_shell_checks(plan: LaunchPlan) -> list[Finding]:
    """DeepSpeed's pdsh runner joins the remote command's words unquoted (``export K=V; cd DIR;
    PYTHON -u -m deepspeed.launcher.launch ... ARGS``) and the remote shell reads them: a path
    or argument with shell characters breaks there, though the dry run looks fine."""
    findings = []
    opts = plan.options
    paths = [("the working directory", str(plan.cwd)), ("the Python", sys.executable)]
    if "--venv_script" in plan.deepspeed_argv:
        i = plan.deepspeed_argv.index("--venv_script")
        paths.append(("the venv's activate script", plan.deepspeed_argv[i + 1]))
    if opts.rank_logs:
        paths.append(("--rank-logs", opts.rank_logs))
    paths.append(("the master address", plan.master_addr))
    for what, value in paths:
        bad = _unsafe(value)
        if bad:
            findings.append(
                Finding(
                    "error",
                    f"{what} {value!r} holds {_describe(bad)}: DeepSpeed's pdsh runner puts it unquoted into "
                    "the command the remote shell runs, which breaks there. Use a path of "
                    "letters, digits and @%+=:,./- only (launch from / install into such a "
                    "folder), or use --backend no-ssh",
                    "--backend pdsh",
                )
            )
    for arg in opts.command_args:
        # DeepSpeed's pdsh runner wraps an argument with a space in "..." (escaping " only)
        bad = _SPECIAL_IN_QUOTED_ARG.findall(arg) if " " in arg else _unsafe(arg)
        if bad:
            findings.append(
                Finding(
                    "error",
                    f"argument {arg!r} holds {_describe(bad)}: DeepSpeed's pdsh runner passes it "
                    "to the remote shell, which would change it (it quotes only arguments with a "
                    'space, in "...", where $ ` \\ still act). Avoid those characters, or use '
                    "--backend no-ssh",
                    "after --",
                )
            )
    for key, value in sorted(plan.exports.items()):
        bad = _SPECIAL_IN_QUOTES.findall(value.strip())
        if bad:
            findings.append(
                Finding(
                    "error",
                    f"{key}={value!r} ({_export_source(plan, key)}) holds {_describe(bad)}: pdsh "
                    f'runs export {key}="..." in the remote shell, where " $ ` \\ act inside the '
                    "quotes. Simplify the value, or unset it for the launch",
                    "environment",
                )
            )
    return findings


def _unsafe(word: str) -> list[str]:
    """What a shell would act on in ``word`` unquoted (an empty word vanishes altogether)."""
    return _QUOTED_BY_DEEPSPEED.findall(word) if word else [""]


def _describe(chars: list[str]) -> str:
    names = {
        "": "nothing (an empty word vanishes)",
        " ": "a space",
        "\t": "a tab",
        "\n": "a line break",
        "\r": "a line break",
    }
    return ", ".join(dict.fromkeys(names.get(c, repr(c)) for c in chars))


# ---- probes: they look at this node and the network ------------------------------------------


def probe_checks(plan: LaunchPlan, environ: Mapping[str, str]) -> list[Finding]:
    findings = _tool_checks(plan, environ)
    if plan.options.backend == "pdsh" and shutil.which("ssh") is not None:
        findings += _ssh_checks(plan, environ.get("PDSH_SSH_ARGS_APPEND", ""))
    findings += _port_check(plan)
    if plan.options.backend in ("no-ssh", "local"):  # this node runs ranks itself
        findings += _local_interface_checks(plan)
        findings += _local_slot_checks(plan, environ)
    return findings


_TOOLS = {
    "pdsh": ("pdsh", "ssh"),
    "openmpi": ("mpirun", "ompi_info"),
    "slurm": ("srun", "sinfo"),
}
_INSTALL = {
    "pdsh": "install pdsh and an ssh client (apt-get install pdsh openssh-client), or use "
    "--backend no-ssh and start the launch on every node yourself",
    "ssh": "install an ssh client (apt-get install openssh-client)",
    "mpirun": "install Open MPI (apt-get install openmpi-bin), or use another --backend",
    "ompi_info": "install Open MPI (apt-get install openmpi-bin), or use another --backend",
    "srun": "run inside a SLURM allocation on a node with the SLURM client, or use "
    "launcher/slurm/train.sbatch (no-ssh per node)",
    "sinfo": "DeepSpeed's slurm runner looks for sinfo; run on a node with the SLURM client",
}


def _tool_checks(plan: LaunchPlan, environ: Mapping[str, str]) -> list[Finding]:
    path = plan.launcher_env(environ).get("PATH")
    return [
        Finding(
            "error",
            f"{tool} not found on PATH: {_INSTALL[tool]}",
            f"--backend {plan.options.backend}",
        )
        for tool in _TOOLS.get(plan.options.backend, ())
        if shutil.which(tool, path=path) is None
    ]


def _ssh_checks(plan: LaunchPlan, pdsh_ssh_args: str) -> list[Finding]:
    """pdsh starts every node over ssh: each host must accept a key login and have our Python."""
    hosts = list(plan.active)
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        results = list(
            pool.map(lambda h: _ssh_probe(h, plan.options.ssh_port, pdsh_ssh_args), hosts)
        )
    findings = []
    for host, (code, detail) in zip(hosts, results, strict=True):
        where = plan.hostfile.where(host) if plan.hostfile else host
        port = f" -p {plan.options.ssh_port}" if plan.options.ssh_port else ""
        if code == 1:
            findings.append(
                Finding(
                    "error",
                    f"{host} has no {sys.executable}: every node needs this Python environment "
                    "at the same path (a shared filesystem or an identical install)",
                    where,
                )
            )
        elif code != 0:
            findings.append(
                Finding(
                    "error",
                    f"pdsh needs passwordless ssh, but 'ssh{port} {host}' failed ({detail}). Set up "
                    "key login (ssh-copy-id) and known_hosts for every node, or use --backend "
                    "no-ssh (one launch per node) or slurm",
                    where,
                )
            )
    return findings


def _ssh_probe(host: str, port: int | None, extra_args: str) -> tuple[int, str]:
    # PDSH_SSH_ARGS_APPEND: the options pdsh's ssh module adds too (identity files, users, ...)
    cmd = ["ssh", *shlex.split(extra_args)]
    cmd += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT_S}"]
    if port:
        cmd += ["-p", str(port)]
    cmd += [host, "test", "-x", sys.executable]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=SSH_TIMEOUT_S + 5, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return 255, f"no answer within {SSH_TIMEOUT_S + 5} s"
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines[-1] if lines else f"exit code {proc.returncode}"


def _port_check(plan: LaunchPlan) -> list[Finding]:
    opts = plan.options
    if opts.backend == "no-ssh" and opts.node_rank != 0:
        return []  # the master (node 0) may already listen on it
    addrs = _resolve(plan.master_addr)
    if not addrs:
        level = "error" if opts.backend in ("no-ssh", "local") else "warning"
        return [
            Finding(
                level,
                f"{plan.master_addr} does not resolve on this node; every node must reach the "
                "master: give its IP address or a name all nodes resolve",
                "--master-addr",
            )
        ]
    local = [a for a in addrs if _is_local_address(a)]
    if not local:
        return []  # another machine: only it can tell whether the port is free
    for addr in local:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((addr, opts.master_port))
            except OSError as exc:
                return [
                    Finding(
                        "error",
                        f"port {opts.master_port} on {addr} is in use ({exc.strerror}): another "
                        "job's master, or a launch that is still running. Pick a free port with "
                        "--master-port (the same on every node)",
                        "--master-port",
                    )
                ]
    return []


def _local_interface_checks(plan: LaunchPlan) -> list[Finding]:
    names = _interface_names()
    findings = []
    for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        value = plan.env.values.get(key)
        if not value or value[0] in "^=":  # NCCL's exclude / exact-match prefixes
            continue
        wanted = [v for v in value.split(",") if v]
        if key == "NCCL_SOCKET_IFNAME":  # NCCL matches prefixes (eth -> eth0, eth1)
            missing = [v for v in wanted if not any(n.startswith(v) for n in names)]
        else:
            missing = [v for v in wanted if v not in names]
        if missing:
            findings.append(
                Finding(
                    "error" if key.startswith("GLOO") else "warning",
                    f"{key}={value}: no interface {', '.join(missing)} on this node (it has "
                    f"{', '.join(names)}); give the interface that reaches the other nodes",
                    "--ifname" if plan.env.source.get(key) == "--ifname" else key,
                )
            )
    return findings


def _local_slot_checks(plan: LaunchPlan, environ: Mapping[str, str]) -> list[Finding]:
    opts = plan.options
    index = opts.node_rank if opts.backend == "no-ssh" else 0
    node = plan.nodes[index]
    where = plan.hostfile.where(node.host) if plan.hostfile else None
    if is_cpu_run():
        cores = len(os.sched_getaffinity(0))
        if len(node.slots) > cores:
            return [
                Finding(
                    "warning",
                    f"{len(node.slots)} CPU ranks on {cores} usable cores: they will compete for "
                    "them (fine for tests, slow for training)",
                    where,
                )
            ]
        return []
    from deepspeed.accelerator import get_accelerator

    visible_var = get_accelerator().visible_devices_envs()[0]
    visible = environ.get(visible_var)
    if visible and opts.backend == "local" and not opts.gpus_per_node:
        return []  # deepspeed runs exactly those devices
    if visible:
        return [
            Finding(
                "warning",
                f"deepspeed replaces {visible_var}={visible} with the slots it assigns here "
                f"({','.join(map(str, node.slots))}); restrict devices with the hostfile's slots= or "
                "--include HOST:IDS instead",
                where,
            )
        ]
    count = get_accelerator().device_count()
    if max(node.slots, default=-1) >= count:
        return [
            Finding(
                "error",
                f"this node ({node.host}) would use device ids {node.slots}, but it has {count}; "
                "lower its slots= or --gpus-per-node",
                where,
            )
        ]
    return []


# ---- helpers ---------------------------------------------------------------------------------


def _interface_names() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def _interfaces() -> str:
    return ", ".join(_interface_names()) or "none found"


def _is_loopback(host: str) -> bool:
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []
    return sorted({info[4][0] for info in infos})


def _is_local_address(addr: str) -> bool:
    if ipaddress.ip_address(addr).is_loopback:
        return True
    import psutil  # a DeepSpeed dependency

    return any(a.address == addr for addrs in psutil.net_if_addrs().values() for a in addrs)
