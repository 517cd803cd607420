"""Real DeepSpeed checkpoints for the conversion tests, made once per test session.

``zero_run(world, variant)`` returns a run directory ``<variant>/`` holding ``checkpoints/``
(``latest`` + one tag), ``hf_config/config.json`` and ``reference.safetensors`` (the live
parameters after training). All variants of one world size come from one ``torchrun`` job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from natscale.train.dist import free_port, remove_shm_buffers

REPO = Path(__file__).resolve().parents[2]
MAKER = Path(__file__).with_name("make_zero_checkpoint.py")
VARIANTS = {
    1: ["z3-fp32", "z2-fp32", "z3-fp32-gemma2"],
    2: ["z3-fp32", "z3-bf16-tied", "z2-fp32", "z2-bf16"],
    3: ["z3-fp32", "z2-fp32"],
}
TIMEOUT_S = 300


def rank_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        DS_ACCELERATOR="cpu",
        HF_HUB_OFFLINE="1",
        GLOO_SOCKET_IFNAME="lo",
        MASTER_ADDR="127.0.0.1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        NATSCALE_HANG_DUMP_S=str(TIMEOUT_S - 30),  # a hung rank prints its stack before we kill it
    )
    return env


def make_checkpoints(out: Path, world: int, variants: list[str]) -> None:
    port = free_port()
    try:
        _run_job(out, world, variants, port)
    finally:
        remove_shm_buffers(port)  # DeepSpeed's shm all-reduce leaves 66 MB per rank in /dev/shm


def _run_job(out: Path, world: int, variants: list[str], port: int) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(world),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(MAKER),
        "--out",
        str(out),
        "--variants",
        ",".join(variants),
    ]
    proc = subprocess.run(
        cmd, env=rank_env(), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


@pytest.fixture(scope="session")
def zero_run(tmp_path_factory):
    made: dict[int, Path] = {}

    def get(world: int, variant: str) -> Path:
        if world not in made:
            out = tmp_path_factory.mktemp(f"zero_w{world}")
            make_checkpoints(out, world, VARIANTS[world])
            made[world] = out
        return made[world] / variant

    return get
