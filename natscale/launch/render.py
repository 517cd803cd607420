"""The dry run's text: who runs what, where, with which environment."""

from __future__ import annotations

import shlex

from natscale.launch.plan import LaunchPlan


def _cmd(argv: list[str]) -> str:
    return shlex.join(argv)


def _ranks(r: range) -> str:
    return f"rank {r.start}" if len(r) == 1 else f"ranks {r.start}-{r.stop - 1}"


def describe(plan: LaunchPlan, run_lines: list[str], natscale_argv: list[str] | None = None) -> str:
    """Everything a dry run prints (without the findings and the summary line).

    natscale_argv: the ``natscale launch`` options to repeat on every node (no-ssh), if known.
    """
    opts = plan.options
    out = [
        f"backend: {opts.backend}; {len(plan.active)} node(s), world size {plan.world_size}; "
        f"master {plan.master_addr}:{opts.master_port}",
    ]
    if plan.hostfile is not None:
        out.append(f"hostfile: {plan.hostfile.path}")
    for node in plan.nodes:
        where = f"  ({plan.hostfile.where(node.host)})" if plan.hostfile else ""
        slots = ",".join(map(str, node.slots))
        out.append(f"  node {node.index}: {node.host}, slots {slots}, {_ranks(node.ranks)}{where}")
    out += run_lines
    if plan.env_file is not None:
        out.append(
            f"environment for every rank, written to {plan.env_file.name} (DeepSpeed exports it):"
        )
    else:
        out.append("environment for every rank, set on the deepspeed launcher of this node:")
    width = max(len(k) for k in plan.env.values)
    for key in sorted(plan.env.values):
        out.append(f"  {key:<{width}} = {plan.env.values[key]}   [{plan.env.source[key]}]")
    out.append("this node runs:")
    out.append(f"  {_cmd(plan.deepspeed_argv)}")
    if plan.spawn_argv is not None:
        out.append("which runs:")
        out.append(f"  {_cmd(plan.spawn_argv)}")
    for node in plan.nodes:
        out += _node_lines(plan, node, natscale_argv)
    return "\n".join(out)


def _node_lines(plan: LaunchPlan, node, natscale_argv: list[str] | None) -> list[str]:
    backend = plan.options.backend
    head = f"node {node.index} ({node.host}, {_ranks(node.ranks)})"
    if backend == "pdsh":
        return [f"{head} runs over ssh ({node.per_rank}):", f"  {node.shell}"]
    if backend in ("openmpi", "slurm"):
        return [f"{head} runs one such process per slot ({node.per_rank}):", f"  {_cmd(node.argv)}"]
    lines = []
    if backend == "no-ssh":
        lines.append(f"{head}: start it there with")
        if natscale_argv is not None:
            lines += [f"  {_cmd(_set_node_rank(natscale_argv, node.index))}", "which runs"]
        lines += [f"  {_cmd(node.argv)}", f"which starts ({node.per_rank}):"]
    else:
        lines.append(f"{head}: deepspeed starts ({node.per_rank}):")
    return [*lines, f"  {_cmd(node.launch_argv)}"]


def _set_node_rank(argv: list[str], rank: int) -> list[str]:
    i = argv.index("--node-rank")
    return [*argv[: i + 1], str(rank), *argv[i + 2 :]]
