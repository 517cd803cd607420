"""Benchmark jobs are built by natscale's launcher: the commands and rank environment of a
multi-rank benchmark are those `natscale launch` runs for the same options."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pytest

from natscale.bench.launch import build_job, device_environ, launch_options
from natscale.cli import launch as launch_cli
from natscale.launch.envfile import source_root
from natscale.launch.plan import build_plan
from natscale.train.dist import remove_shm_buffers


def _what_natscale_launch_runs(argv: list[str], cwd: Path) -> tuple[list[list[str]], dict]:
    """Parse a `natscale launch` command line with the real CLI and plan it."""
    parser = argparse.ArgumentParser()
    launch_cli.add_arguments(parser)
    opts = launch_cli.options_from_args(parser.parse_args(argv))
    environ = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    plan, findings = build_plan(opts, environ, cwd)
    assert plan is not None, findings
    return [node.argv for node in plan.nodes], plan.launcher_env(environ)


@pytest.mark.parametrize(("world_size", "nodes"), [(2, 1), (4, 2)])
def test_multi_rank_jobs_are_natscale_launch_commands(tmp_path, world_size, nodes):
    config = tmp_path / "run.yaml"
    job = build_job(
        config, world_size=world_size, nodes=nodes, log_dir=tmp_path, environ={}, port=29611
    )
    env: dict[str, str] = {}
    opts = launch_options(
        config, world_size=world_size, nodes=nodes, port=29611, log_dir=tmp_path, env=env
    )
    commands = []
    for rank in range(nodes):
        argv = opts.cli_argv()[2:]  # drop "natscale launch"; the CLI parses the rest as is
        if nodes > 1:
            argv[argv.index("--node-rank") + 1] = str(rank)
        commands += _what_natscale_launch_runs(argv, tmp_path)[0][rank : rank + 1]
    assert job.commands == commands
    assert len(job.commands) == nodes
    assert all(["train", "--config", str(config)] == cmd[-3:] for cmd in job.commands)
    assert job.env["MASTER_PORT"] == "29611" and job.env["MASTER_ADDR"] == "127.0.0.1"
    assert job.env["PYTHONPATH"].split(os.pathsep)[0] == source_root()
    assert job.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def _job(tmp_path: Path, world_size: int, nodes: int = 1, **environ: str):
    return build_job(
        tmp_path / "run.yaml", world_size=world_size, nodes=nodes, log_dir=tmp_path, environ=environ
    )


def test_one_rank_runs_natscale_train_alone_with_the_same_environment(tmp_path):
    job = _job(tmp_path, 1)
    assert job.commands == [
        [sys.executable, "-m", "natscale.cli", "train", "--config", str(tmp_path / "run.yaml")]
    ]
    assert job.env["GLOO_SOCKET_IFNAME"] == "lo" and job.env["HF_HUB_OFFLINE"] == "1"
    assert job.env["PYTHONPATH"].split(os.pathsep)[0] == source_root()
    mine = _job(tmp_path, 1, GLOO_SOCKET_IFNAME="eth7")
    assert mine.env["GLOO_SOCKET_IFNAME"] == "eth7"  # the caller's value wins


def test_one_node_uses_the_first_visible_devices(tmp_path):
    job = _job(tmp_path, 2, CUDA_VISIBLE_DEVICES="3,5,7")
    assert job.env["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert "--num_gpus" not in job.commands[0]  # DeepSpeed then runs on exactly those


def test_a_cpu_benchmark_runs_on_the_cpu_where_a_gpu_is_visible(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0", "DS_ACCELERATOR": "cuda"}
    job = _job(tmp_path, 1, **device_environ("cpu", env))
    assert job.env["DS_ACCELERATOR"] == "cpu"  # --device cpu is what was asked for
    assert device_environ("cuda", env) == env


def test_bad_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of 2 nodes"):
        _job(tmp_path, 3, nodes=2)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_leftover_shm_segments_of_the_job_are_removed():
    uid = os.getuid()
    ours = [Path(f"/dev/shm/deepspeed_allreduce_buffer_{uid}_127.0.0.1_1_{r}") for r in range(2)]
    other = Path(f"/dev/shm/deepspeed_allreduce_buffer_{uid}_127.0.0.1_10_0")
    try:
        for path in [*ours, other]:
            path.write_bytes(b"")
        assert sorted(remove_shm_buffers(1)) == sorted(str(p) for p in ours)
        assert other.exists() and not any(p.exists() for p in ours)
    finally:
        for path in [*ours, other]:
            path.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_two_node_benchmark_runs_through_the_launcher(tmp_path, monkeypatch):
    import json

    from natscale.cli.main import main

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    argv = ["bench", "throughput", "--model", "tiny", "--data", "gsm8k", "--seq-len", "256"]
    argv += ["--warmup", "1", "--steps", "1", "--device", "cpu", "--no-ac", "--no-baseline"]
    argv += ["--world-size", "2", "--nodes", "2", "--repeats", "1"]
    assert main([*argv, "--work-dir", str(tmp_path / "work"), "--results", str(results)]) == 0
    (path,) = results.glob("throughput_tiny_gsm8k_cpu_*.json")
    record = json.loads(path.read_text())
    commands = record["natscale"]["commands"]
    assert [c.split("--node_rank ")[1].split()[0] for c in commands] == ["0", "1"]
    assert all("--no_ssh" in c and "natscale.cli train --config" in c for c in commands)
    assert record["natscale"]["measured_steps"] == 1


def test_a_timed_out_job_takes_its_grandchildren_down(tmp_path, monkeypatch):
    """The job's process is the deepspeed launcher, whose ranks are its grandchildren: a timeout
    used to SIGKILL the launcher only, leaving the ranks running (and skewing the next run)."""
    from natscale.bench import launch as bench_launch

    pid_file = tmp_path / "grandchild.pid"
    script = f"sleep 600 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait"
    job = bench_launch.BenchJob([["bash", "-c", script]], dict(os.environ), port=1)
    monkeypatch.setattr(bench_launch, "build_job", lambda *a, **k: job)
    for timeout_s in (1, 5, 30):  # a longer one only if a loaded machine had not started it yet
        code, _, _ = bench_launch.run_train(
            tmp_path / "run.yaml",
            world_size=1,
            nodes=1,
            log_dir=tmp_path / "logs",
            timeout_s=timeout_s,
        )
        assert code == 124
        if pid_file.exists():
            break
    pid = int(pid_file.read_text())
    status = Path(f"/proc/{pid}/status")
    for _ in range(200):  # SIGKILL is sent; a loaded machine may take a moment to finish it off
        state = status.read_text().split("State:")[1].split()[0] if status.exists() else "gone"
        if state in ("Z", "X", "gone"):
            break
        time.sleep(0.05)
    assert state in ("Z", "X", "gone"), f"the grandchild {pid} still runs ({state})"


def test_a_node_that_fails_early_ends_the_job_at_once(tmp_path, monkeypatch):
    """Two loopback nodes: one fails at start, the other would wait out its rendezvous. The job
    ends with the failed node's code, long before the timeout, and takes the other node down."""
    from natscale.bench import launch as bench_launch

    job = bench_launch.BenchJob(
        [["bash", "-c", "sleep 600"], ["bash", "-c", "echo node 1 broke; exit 3"]],
        dict(os.environ),
        port=1,
    )
    monkeypatch.setattr(bench_launch, "build_job", lambda *a, **k: job)
    start = time.monotonic()
    code, tail, _ = bench_launch.run_train(
        tmp_path / "run.yaml", world_size=2, nodes=2, log_dir=tmp_path / "logs", timeout_s=300
    )
    assert code == 3 and "node 1 broke" in tail
    assert time.monotonic() - start < 60


def test_a_node_killed_by_a_signal_is_a_failure_even_when_the_other_succeeded(
    tmp_path, monkeypatch
):
    from natscale.bench import launch as bench_launch

    job = bench_launch.BenchJob(
        [["bash", "-c", "exit 0"], ["bash", "-c", "sleep 0.5; kill -9 $$"]], dict(os.environ), 1
    )
    monkeypatch.setattr(bench_launch, "build_job", lambda *a, **k: job)
    code, _, _ = bench_launch.run_train(
        tmp_path / "run.yaml", world_size=2, nodes=2, log_dir=tmp_path / "logs", timeout_s=60
    )
    assert code == -9  # max() of the codes made this 0: a success
