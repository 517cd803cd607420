"""Commands that start ``natscale train`` for a benchmark: alone, torchrun, or no-ssh "nodes".

Multi-node runs use the plain DeepSpeed launcher commands that ``natscale launch`` wraps
(``deepspeed --hostfile H --no_ssh --node_rank N --master_addr A --master_port P``), one per
node; on one machine every "node" is a loopback process group (CPU ranks over gloo).
"""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_commands(
    config: Path, *, world_size: int, nodes: int, port: int, log_dir: Path
) -> list[list[str]]:
    """One command per node that runs ``natscale train config`` on ``world_size`` ranks in all."""
    py = sys.executable
    train = ["train", "--config", str(config)]
    if world_size % nodes:
        raise ValueError(f"world size {world_size} is not a multiple of {nodes} nodes")
    if nodes == 1 and world_size == 1:
        return [[py, "-m", "natscale.cli", *train]]
    master = ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    if nodes == 1:
        torchrun = [py, "-m", "torch.distributed.run", "--nproc_per_node", str(world_size)]
        return [[*torchrun, *master, "-m", "natscale.cli", *train]]
    hostfile = log_dir / "hostfile"  # labels only: every "node" is this machine
    hostfile.write_text("".join(f"node{i} slots={world_size // nodes}\n" for i in range(nodes)))
    ds = [py, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh"]
    return [
        [*ds, "--node_rank", str(i), *master, "--module", "natscale.cli", *train]
        for i in range(nodes)
    ]


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_train(
    config: Path, *, world_size: int, nodes: int, log_dir: Path, timeout_s: float
) -> tuple[int, str, list[list[str]]]:
    """Run the job to the end; returns (worst exit code, the tail of the logs, the commands)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmds = train_commands(config, world_size=world_size, nodes=nodes, port=port, log_dir=log_dir)
    logs = [log_dir / f"node{i}.log" for i in range(len(cmds))]
    procs = []
    env = run_env()
    try:
        for cmd, log in zip(cmds, logs, strict=True):
            with log.open("w") as fh:
                procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env))
        codes = [p.wait(timeout=timeout_s) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        codes = [124]
    finally:
        _remove_shm(port)
    tail = "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)
    return max(codes), tail, cmds


def _remove_shm(port: int) -> None:
    # DeepSpeed's CPU allreduce buffers are named by master address and port (unique per run)
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
