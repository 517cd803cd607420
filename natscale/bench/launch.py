"""Benchmark jobs: ``natscale train`` alone, or the launch ``natscale launch`` would run.

One rank runs ``natscale train --config CONFIG`` in one process (a job of one, as users run it).
More ranks are a launch plan (:func:`natscale.launch.plan.build_plan`), the same commands and
rank environment ``natscale launch`` builds: one node is ``natscale launch --gpus-per-node W``;
``N`` nodes are ``natscale launch --backend no-ssh --node-rank I`` once per node, with a
hostfile of labels, so on one machine every "node" is a loopback process group (CPU ranks over
gloo).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from natscale.launch.options import LaunchOptions
from natscale.train.dist import free_port, remove_shm_buffers

VISIBLE = "CUDA_VISIBLE_DEVICES"  # DeepSpeed's name for every accelerator natscale runs on
# set for the benchmark's ranks unless the caller's environment says otherwise
BENCH_ENV_DEFAULTS = {
    "GLOO_SOCKET_IFNAME": "lo",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class BenchJob:
    """What to start: one command per node, all with ``env``; ``port`` is the master port."""

    commands: list[list[str]]
    env: dict[str, str]
    port: int


def launch_options(
    config: Path, *, world_size: int, nodes: int, port: int, log_dir: Path, env: dict[str, str]
) -> LaunchOptions | None:
    """The ``natscale launch`` options of a job (None for one rank: no launcher). A one-node
    job uses the first ``world_size`` devices of ``env``'s CUDA_VISIBLE_DEVICES (trimmed in
    place) when it lists enough, else devices 0..world_size-1."""
    if world_size % nodes:
        raise ValueError(f"world size {world_size} is not a multiple of {nodes} nodes")
    if nodes == 1 and world_size == 1:
        return None
    train_args = ["--config", str(config)]
    if nodes == 1:
        visible = [i for i in env.get(VISIBLE, "").split(",") if i.strip()]
        if len(visible) >= world_size:  # DeepSpeed then runs exactly these
            env[VISIBLE] = ",".join(visible[:world_size])
            return LaunchOptions(train_args, master_port=port)
        return LaunchOptions(train_args, gpus_per_node=world_size, master_port=port)
    hostfile = log_dir / "hostfile"  # labels only: every "node" is this machine
    hostfile.write_text(
        "".join(f"node{i} slots={world_size // nodes}\n" for i in range(nodes)), encoding="utf-8"
    )
    return LaunchOptions(
        train_args,
        backend="no-ssh",
        hostfile=str(hostfile),
        node_rank=0,
        master_addr="127.0.0.1",
        master_port=port,
    )


def build_job(
    config: Path,
    *,
    world_size: int,
    nodes: int,
    log_dir: Path,
    environ: Mapping[str, str],
    port: int | None = None,
) -> BenchJob:
    """The commands and environment of a benchmark job (ValueError when it cannot run)."""
    from natscale.launch.findings import errors
    from natscale.launch.plan import build_plan

    port = port or free_port()
    env = {**BENCH_ENV_DEFAULTS, **environ}
    opts = launch_options(
        config, world_size=world_size, nodes=nodes, port=port, log_dir=log_dir, env=env
    )
    # one rank: no launcher, but the same rank environment a one-rank launch gets
    plan, findings = build_plan(
        opts or LaunchOptions([], gpus_per_node=1, master_port=port), env, log_dir
    )
    if plan is None:
        raise ValueError("; ".join(str(f) for f in errors(findings)))
    env = plan.launcher_env(env)
    if opts is None:
        return BenchJob(
            [[sys.executable, "-m", "natscale.cli", "train", "--config", str(config)]], env, port
        )
    return BenchJob([list(node.argv or []) for node in plan.nodes], env, port)


def device_environ(device: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for ranks on ``device``: for ``cpu``, DeepSpeed's CPU accelerator, which it
    would otherwise not pick on a machine with a GPU (the run would train there)."""
    return {**environ, "DS_ACCELERATOR": "cpu"} if device == "cpu" else dict(environ)


def run_train(
    config: Path,
    *,
    world_size: int,
    nodes: int,
    log_dir: Path,
    timeout_s: float,
    device: str = "cuda",
) -> tuple[int, str, list[list[str]]]:
    """Run the job to the end; returns (worst exit code, the tail of the logs, the commands).
    ``device: cpu`` runs on the CPU even where a GPU is visible (DeepSpeed's CPU accelerator)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    environ = device_environ(device, os.environ)
    job = build_job(config, world_size=world_size, nodes=nodes, log_dir=log_dir, environ=environ)
    logs = [log_dir / f"node{i}.log" for i in range(len(job.commands))]
    procs: list[subprocess.Popen] = []
    codes = [124]
    try:
        for cmd, log in zip(job.commands, logs, strict=True):
            with log.open("w") as fh:
                # its own process group: the deepspeed launcher's ranks are its grandchildren,
                # and a timeout (or Ctrl-C here) must stop them too, not only the launcher
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        env=job.env,
                        start_new_session=True,
                    )
                )
        codes = _wait_all_or_first_failure(procs, timeout_s)
    finally:
        _kill_groups(procs)  # whatever still runs: a timeout, an interrupt, a launcher's leftovers
        remove_shm_buffers(job.port)  # left behind only by a rank that died before its init
    tail = "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)
    return next((c for c in codes if c != 0), 0), tail, job.commands


def _wait_all_or_first_failure(procs: list[subprocess.Popen], timeout_s: float) -> list[int]:
    """Exit codes once every process has ended, or as soon as one fails: the other nodes of a
    job cannot finish without it and would only wait out their rendezvous. The failed node's
    code comes first; 124 for a timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return failed
        if all(c == 0 for c in codes):
            return [0] * len(procs)
        if time.monotonic() >= deadline:
            return [124]
        time.sleep(0.2)


def _kill_groups(procs: list[subprocess.Popen]) -> None:
    """SIGKILL the process group of each job process (its ranks included) and reap it."""
    for p in procs:
        # ProcessLookupError: the group is gone, every process in it has exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
