"""launcher/ scripts: valid shell, a usage comment at the top, and what they run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from natscale.launch.envfile import source_root
from tests.train.train_fixtures import (
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)

LAUNCHER = Path(source_root()) / "launcher"
SCRIPTS = sorted(p for p in LAUNCHER.rglob("*") if p.suffix in (".sh", ".sbatch"))


def test_scripts_are_there():
    assert {p.relative_to(LAUNCHER).as_posix() for p in SCRIPTS} == {
        "mpi/run.sh",
        "run_node.sh",
        "slurm/train.sbatch",
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_valid_shell_opening_with_its_usage(script: Path):
    subprocess.run(["bash", "-n", str(script)], check=True)
    head = script.read_text().splitlines()[:6]
    assert head[0].startswith("#!")
    usage = f"launcher/{script.relative_to(LAUNCHER).as_posix()}"
    assert any(line.startswith("#") and usage in line for line in head), head
    assert os.access(script, os.X_OK)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=source_root(), DS_ACCELERATOR="cpu")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(extra)
    return env


def test_run_node_without_arguments_prints_its_usage():
    proc = subprocess.run(["bash", str(LAUNCHER / "run_node.sh")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "launcher/run_node.sh NODE_RANK HOSTFILE MASTER_ADDR CONFIG" in proc.stderr


def test_run_node_starts_the_no_ssh_launch_of_its_node(tmp_path: Path):
    save_rows(pack_greedy(make_segments(12, seed=0), 64), tmp_path / "data")
    write_model_config(tmp_path / "model")
    config = write_run_config(
        tmp_path / "run.yaml",
        data_dir=tmp_path / "data",
        model_config=tmp_path / "model",
        out=tmp_path / "out",
    )
    (tmp_path / "hosts").write_text("node-a slots=1\nnode-b slots=1\n")
    env = _env(IFNAME="eth1", MASTER_PORT="29123", NATSCALE_LAUNCH_ARGS="--dry-run")
    cmd = [
        "bash",
        str(LAUNCHER / "run_node.sh"),
        "1",
        "hosts",
        "10.0.0.1",
        str(config),
        "--set",
        "train.lr=1e-3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "backend: no-ssh; 2 node(s), world size 2; master 10.0.0.1:29123" in proc.stdout
    assert (
        f"--no_ssh --node_rank 1 --module natscale.cli train {config} --set train.lr=1e-3"
        in proc.stdout
    )
    assert re.search(r"^  GLOO_SOCKET_IFNAME +\= eth1   \[--ifname\]$", proc.stdout, re.M)
    assert (
        proc.stdout.strip()
        .splitlines()[-1]
        .startswith("launch: dry run OK (no-ssh, 2 node(s), 2 rank(s)")
    )


_FAKE_SCONTROL = """#!/bin/bash
# fake: scontrol show hostnames LIST (the allocation's hosts, one a line, in SLURM's order)
[ "$1 $2" = "show hostnames" ] || exit 1
printf 'node-a\\nnode-b\\n'
"""
_FAKE_SRUN = """#!/bin/bash
# fake srun: the command once per node, all at once, as SLURM_NODEID 0 and 1
while [[ $1 == --* ]]; do shift; done
for id in 0 1; do
  SLURM_NODEID=$id SLURM_PROCID=$id SLURM_LOCALID=0 "$@" >"$TMPDIR/task$id.out" 2>&1 &
done
code=0
for job in $(jobs -p); do wait "$job" || code=$?; done
cat "$TMPDIR/task0.out" "$TMPDIR/task1.out"
exit $code
"""


@pytest.mark.slow  # two dry runs at once: about 30 s on 2 busy cores
def test_slurm_batch_script_launches_every_node_of_a_two_node_allocation(tmp_path: Path):
    """Each task writes its hostfile and runs the no-ssh launch; the host list (one a line) once
    travelled in NATSCALE_NODES, which natscale copies to the ranks: every 2-node job was refused."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", _FAKE_SCONTROL), ("srun", _FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    save_rows(pack_greedy(make_segments(12, seed=0), 64), tmp_path / "data")
    write_model_config(tmp_path / "model")
    write_run_config(
        tmp_path / "run.yaml",
        data_dir=Path("data"),
        model_config=Path("model/config.json"),
        out=Path("out"),
    )
    env = _env(
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_JOB_ID="1234",
        SLURM_JOB_NUM_NODES="2",
        IFNAME="lo",
        NATSCALE_LAUNCH_ARGS="--dry-run",
        TMPDIR=str(tmp_path),
        HOME=str(tmp_path / "home"),
    )
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    proc = subprocess.run(
        ["bash", str(LAUNCHER / "slurm" / "train.sbatch"), "run.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "natscale: 2 node(s) x 1, master node-a:21234" in out
    assert out.count("launch: dry run OK (no-ssh, 2 node(s), 2 rank(s)") == 2, out
    for rank in (0, 1):
        assert f"--no_ssh --node_rank {rank} --module natscale.cli train run.yaml" in out
        hostfile = tmp_path / f"natscale-hosts.1234.{rank}"
        assert hostfile.read_text() == "node-a slots=1\nnode-b slots=1\n"
    assert "NATSCALE_NODES" not in out


@pytest.mark.parametrize(
    ("hostfile", "message"),
    [(None, "run.sh: cannot read hostfile"), ("# nothing\n", "lists no 'HOST slots=N' line")],
)
def test_mpi_run_script_refuses_a_bad_hostfile(tmp_path: Path, hostfile, message):
    path = tmp_path / "hosts"
    if hostfile is not None:
        path.write_text(hostfile)
    proc = subprocess.run(
        ["bash", str(LAUNCHER / "mpi" / "run.sh"), str(path), "run.yaml"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and message in proc.stderr


def test_entry_script_runs_the_cli_by_path():
    """DeepSpeed's slurm runner starts `python natscale/launch/entry.py train ...` (no --module)."""
    from natscale.launch.plan import ENTRY_SCRIPT

    proc = subprocess.run(
        [sys.executable, "-u", str(ENTRY_SCRIPT), "launch", "--help"],
        capture_output=True,
        text=True,
        cwd="/",
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: natscale launch [options] -- CONFIG")
