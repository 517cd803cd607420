"""Which hosts and slots a launch uses: the hostfile filtered by --include/--exclude/--nodes/
--gpus-per-node, checked here with line numbers, then resolved by DeepSpeed's own functions (so the
ranks land exactly where ``deepspeed`` will put them).
"""

from __future__ import annotations

from collections import OrderedDict

from natscale.launch.findings import Finding
from natscale.launch.hostfile import Hostfile
from natscale.launch.options import LaunchOptions

Resources = OrderedDict  # host -> slot ids, in hostfile order (DeepSpeed's "active resources")


def check_filters(opts: LaunchOptions, hostfile: Hostfile) -> list[Finding]:
    """Problems with --include/--exclude/--nodes/--gpus-per-node against ``hostfile``."""
    from deepspeed.launcher.runner import parse_node_config_list

    findings: list[Finding] = []
    if opts.include and opts.exclude:
        findings.append(Finding("error", "--include and --exclude cannot be combined"))
    if (opts.include or opts.exclude) and (
        opts.nodes is not None or opts.gpus_per_node is not None
    ):
        findings.append(
            Finding(
                "error",
                "--nodes/--gpus-per-node cannot be combined with --include/--exclude "
                "(DeepSpeed refuses it); name the hosts and slots in --include instead",
            )
        )
    for flag, spec in (("--include", opts.include), ("--exclude", opts.exclude)):
        if not spec:
            continue
        try:
            wanted = parse_node_config_list(spec)
        except ValueError:
            findings.append(
                Finding(
                    "error",
                    f"{spec!r} is not NAME[:SLOT[,SLOT]][@NAME...], e.g. node-a@node-b:0,1",
                    flag,
                )
            )
            continue
        for host, slots in wanted.items():
            entry = hostfile.entry(host)
            if entry is None:
                known = ", ".join(h.name for h in hostfile.hosts)
                findings.append(
                    Finding("error", f"host {host!r} is not in {hostfile.path} ({known})", flag)
                )
                continue
            bad = [s for s in slots if not 0 <= s < entry.slots]
            if bad:
                findings.append(
                    Finding(
                        "error",
                        f"slot(s) {bad} of {host}: it has slots 0..{entry.slots - 1} "
                        f"({hostfile.path}:{entry.line} says slots={entry.slots})",
                        flag,
                    )
                )
    if opts.nodes is not None and not 1 <= opts.nodes <= len(hostfile.hosts):
        findings.append(
            Finding(
                "error",
                f"asks for {opts.nodes} nodes but {hostfile.path} lists {len(hostfile.hosts)}",
                "--nodes",
            )
        )
    if opts.gpus_per_node is not None:
        used = hostfile.hosts[: opts.nodes] if opts.nodes else hostfile.hosts
        for entry in used:
            if opts.gpus_per_node > entry.slots or opts.gpus_per_node < 1:
                # DeepSpeed would silently start ranks on slots the host does not have
                findings.append(
                    Finding(
                        "error",
                        f"{opts.gpus_per_node} per node, but {entry.name} has slots={entry.slots} "
                        f"({hostfile.path}:{entry.line}); lower --gpus-per-node or fix the hostfile",
                        "--gpus-per-node",
                    )
                )
    return findings


def select(opts: LaunchOptions, hostfile: Hostfile) -> Resources:
    """The active resources, exactly as DeepSpeed's runner computes them (call after check_filters)."""
    from deepspeed.launcher.runner import apply_num_nodes_and_gpus, parse_inclusion_exclusion

    active = parse_inclusion_exclusion(hostfile.resource_pool(), opts.include, opts.exclude)
    return apply_num_nodes_and_gpus(
        active,
        opts.nodes if opts.nodes is not None else -1,
        opts.gpus_per_node if opts.gpus_per_node is not None else -1,
    )


def check_backend(opts: LaunchOptions, hostfile: Hostfile, active: Resources) -> list[Finding]:
    """What the chosen backend cannot express."""
    findings: list[Finding] = []
    if opts.backend == "openmpi" and (
        opts.include or opts.exclude or opts.nodes is not None or opts.gpus_per_node is not None
    ):
        findings.append(
            Finding(
                "error",
                "the openmpi backend runs every slot of the hostfile (mpirun -hostfile); "
                "--include/--exclude/--nodes/--gpus-per-node are refused by DeepSpeed. Write a "
                "hostfile listing only the hosts and slots to use",
                "--backend openmpi",
            )
        )
    if opts.backend == "slurm":
        counts = {host: len(slots) for host, slots in active.items()}
        if len(set(counts.values())) > 1:
            lines = ", ".join(
                f"{h} slots={n} (line {hostfile.entry(h).line})" for h, n in counts.items()
            )
            findings.append(
                Finding(
                    "error",
                    f"srun starts the same number of tasks on every node, but the hosts differ: "
                    f"{lines}; use --gpus-per-node N or equal slots",
                    "--backend slurm",
                )
            )
        if any(list(s) != list(range(len(s))) for s in active.values()):
            findings.append(
                Finding(
                    "error",
                    "srun cannot pin tasks to given device ids; include whole hosts or the first N slots",
                    "--backend slurm",
                )
            )
    if opts.backend == "no-ssh":
        if opts.node_rank is None:
            findings.append(
                Finding(
                    "error",
                    f"needs --node-rank: run the same launch on every node with its index "
                    f"0..{len(active) - 1} in the hostfile order ({', '.join(active)})",
                    "--backend no-ssh",
                )
            )
        elif not 0 <= opts.node_rank < len(active):
            findings.append(
                Finding(
                    "error",
                    f"{opts.node_rank} is not in 0..{len(active) - 1} ({len(active)} nodes: {', '.join(active)})",
                    "--node-rank",
                )
            )
    elif opts.node_rank is not None:
        findings.append(
            Finding(
                "error",
                "only the no-ssh backend takes --node-rank (add --backend no-ssh)",
                "--node-rank",
            )
        )
    return findings


def rank_ranges(active: Resources) -> list[tuple[str, list[int], range]]:
    """(host, slot ids, global ranks) per node, in DeepSpeed's rank order."""
    out, first = [], 0
    for host, slots in active.items():
        out.append((host, list(slots), range(first, first + len(slots))))
        first += len(slots)
    return out
