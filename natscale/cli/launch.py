"""`natscale launch [options] -- CONFIG [train overrides]`: a training job on one or many nodes.

A thin layer over DeepSpeed's launcher (``deepspeed``): it checks the hostfile, the options, the
run config and its prepared data, writes ``.deepspeed_env`` with what every node needs, and runs
``deepspeed ... --module natscale.cli train CONFIG ...``. ``--dry-run`` prints the command each
node will run; ``--check`` runs the preflight checks (ssh, ports, interfaces) and stops.

    natscale launch --hostfile hosts --ifname eth1 -- run.yaml                  # pdsh (ssh)
    natscale launch --backend no-ssh --hostfile hosts --node-rank 1 \\
        --master-addr node-a -- run.yaml                                        # on every node
    natscale launch --backend openmpi --hostfile hosts --ifname ib0 -- run.yaml
    natscale launch --gpus-per-node 8 -- run.yaml                               # one node
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from natscale.cli.argtypes import int_at_least, path_text, port, positive_int
from natscale.launch.findings import Finding
from natscale.launch.options import BACKENDS, DEFAULT_MASTER_PORT, LaunchOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "natscale launch [options] -- CONFIG [--set KEY=VALUE ...] [--resume]"
    where = parser.add_argument_group("where")
    where.add_argument(
        "--hostfile",
        metavar="PATH",
        type=path_text,
        help="'HOST slots=N' per line (launcher/hostfile.example); none: this node only",
    )
    where.add_argument(
        "--backend",
        choices=BACKENDS,
        help="how nodes are started: pdsh (ssh; the default with --hostfile), openmpi (mpirun), "
        "slurm (srun, inside an allocation), no-ssh (you start the launch on every node)",
    )
    where.add_argument(
        "--include",
        default="",
        metavar="SPEC",
        help="only these hosts/slots: NAME[:SLOT,SLOT][@NAME...]",
    )
    where.add_argument(
        "--exclude", default="", metavar="SPEC", help="all but these hosts/slots (same syntax)"
    )
    where.add_argument(
        "--nodes", type=positive_int, metavar="N", help="the first N hosts of the hostfile"
    )
    where.add_argument(
        "--gpus-per-node",
        type=positive_int,
        metavar="N",
        help="ranks per node (devices 0..N-1; CPU: processes)",
    )
    where.add_argument(
        "--node-rank",
        type=int_at_least(0),
        metavar="I",
        help="no-ssh: this node's index in the hostfile",
    )
    where.add_argument(
        "--master-addr",
        metavar="ADDR",
        help="address of node 0 that every node reaches (default: the first host)",
    )
    where.add_argument(
        "--master-port",
        type=port,
        default=DEFAULT_MASTER_PORT,
        metavar="PORT",
        help=f"default {DEFAULT_MASTER_PORT}",
    )
    where.add_argument("--ssh-port", type=port, metavar="PORT", help="pdsh: ssh port of the nodes")
    env = parser.add_argument_group("environment of every rank")
    env.add_argument(
        "--ifname",
        metavar="IFACE",
        help="network interface between nodes: GLOO_/NCCL_SOCKET_IFNAME (and mpirun's TCP)",
    )
    env.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="also export this variable (repeatable; KEY alone copies this node's value)",
    )
    more = parser.add_argument_group("launcher")
    more.add_argument(
        "--launcher-args",
        default="",
        metavar="ARGS",
        help="extra arguments for pdsh / mpirun / srun, one string (--launcher-args='--x y' when it starts with -)",
    )
    more.add_argument(
        "--deepspeed-args",
        default="",
        metavar="ARGS",
        help="extra deepspeed launcher flags, e.g. --deepspeed-args=--bind_cores_to_rank",
    )
    more.add_argument(
        "--rank-logs",
        metavar="DIR",
        type=path_text,
        help="one log file per rank in DIR on each node",
    )
    more.add_argument(
        "--selftest",
        action="store_true",
        help="run `natscale selftest` on every rank instead of training (args after -- go to it)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, print what each node would run, start nothing",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="run every preflight check (ssh, ports, interfaces) and stop",
    )
    parser.add_argument("command_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    rest = list(args.command_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    backend = args.backend or (
        "no-ssh" if args.node_rank is not None else "pdsh" if args.hostfile else "local"
    )
    return LaunchOptions(
        command_args=rest,
        command="selftest" if args.selftest else "train",
        backend=backend,
        hostfile=args.hostfile,
        include=args.include,
        exclude=args.exclude,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        ssh_port=args.ssh_port,
        ifname=args.ifname,
        env=list(args.env),
        launcher_args=args.launcher_args,
        deepspeed_args=args.deepspeed_args,
        rank_logs=args.rank_logs,
    )


class _ArgError(Exception):
    pass


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # raise instead of printing usage and exiting
        raise _ArgError(message)


def check_command(
    command: str, command_args: list[str], *, world_size: int
) -> tuple[list[str], list[Finding]]:
    """(lines describing the run, findings) for ``natscale COMMAND ARGS`` (the arguments after
    ``--``) on ``world_size`` ranks, parsed by the command's own parser."""
    import contextlib
    import importlib
    import io

    from natscale.cli.train import config_given_twice, train_args
    from natscale.launch.runcheck import check_train

    parser = _RaisingParser(prog=f"natscale {command}", add_help=False)
    importlib.import_module(f"natscale.cli.{command}").add_arguments(parser)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parsed = parser.parse_args(command_args)
    except _ArgError as exc:
        return [], [
            Finding("error", f"natscale {command} {' '.join(command_args)}: {exc}", "after --")
        ]
    if command != "train":
        return [f"command: natscale {command} {' '.join(command_args)}".rstrip()], []
    if config_given_twice(parsed):
        return [], [
            Finding("error", "give the run config once (CONFIG or --config CONFIG)", "after --")
        ]
    return check_train(train_args(parsed), world_size=world_size)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    opts = options_from_args(args)
    from natscale.launch.findings import errors
    from natscale.launch.plan import build_plan
    from natscale.launch.preflight import probe_checks, static_checks
    from natscale.launch.render import describe

    environ = dict(os.environ)
    plan, findings = build_plan(opts, environ, Path.cwd())
    world = plan.world_size if plan else 1
    run_lines, run_findings = check_command(opts.command, opts.command_args, world_size=world)
    findings += run_findings
    if plan is not None:
        findings += static_checks(plan, environ)
        if not args.dry_run and not errors(findings):
            findings += probe_checks(plan, environ)
    for finding in findings:
        print(f"natscale launch: {finding}", file=sys.stderr, flush=True)
    shape = (
        f"{opts.backend}, {len(plan.active)} node(s), {plan.world_size} rank(s)"
        if plan
        else opts.backend
    )
    if errors(findings) or plan is None:
        print(
            f"launch: refused ({len(errors(findings))} error(s), {shape}); nothing started",
            flush=True,
        )
        return 2
    warnings = sum(f.level == "warning" for f in findings)
    if args.dry_run:
        print(describe(plan, run_lines, opts.cli_argv() if opts.backend == "no-ssh" else None))
        print(f"launch: dry run OK ({shape}, {warnings} warning(s)); nothing started", flush=True)
        return 0
    if args.check:
        print("\n".join(run_lines))
        print(
            f"launch: checks passed ({shape}, {warnings} warning(s)); nothing started", flush=True
        )
        return 0
    from natscale.launch.execute import run_plan

    code = run_plan(plan, environ)
    status = "finished" if code == 0 else f"failed with exit code {code}"
    print(f"launch: {shape} {status} after {time.monotonic() - started:.1f} s", flush=True)
    return code
