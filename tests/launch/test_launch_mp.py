"""Real launches on this machine: `natscale launch` training the tiny model with ZeRO-3 as two
no-ssh "nodes" on loopback, the same across two network namespaces (root), and
launcher/mpi/run.sh under mpirun. Slow ones: the pdsh backend over a private sshd, the openmpi
backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.launch.netns import two_nodes
from tests.launch.sshd import loopback_sshd
from tests.mp.harness import RunResult, assert_ok, parse_json_lines, run_distributed
from tests.train.train_fixtures import (
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)

pytestmark = pytest.mark.multiproc
STEPS = 6


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Packed rows and a tiny Llama config, prepared once (never by the launched ranks)."""
    base = tmp_path_factory.mktemp("launch_mp")
    save_rows(pack_greedy(make_segments(48, seed=0), 64), base / "data")
    write_model_config(base / "model")
    return base


def _run_config(prepared: Path, name: str) -> Path:
    return write_run_config(
        prepared / f"{name}.yaml",
        data_dir=prepared / "data",
        model_config=prepared / "model" / "config.json",
        out=prepared / name,
        train={"steps": STEPS},
    )


def _assert_trained(result: RunResult, out: Path, *, world_size: int = 2) -> dict:
    assert_ok(result)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reason"] == "finished" and summary["steps"] == STEPS
    assert summary["world_size"] == world_size
    assert summary["final_loss"] < summary["first_loss"]
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == world_size
    assert f"train: finished at step {STEPS}/{STEPS}" in result.rank_logs[0]
    return summary


def test_two_no_ssh_launchers_train_on_loopback(prepared):
    config = _run_config(prepared, "loopback")
    result = run_distributed(["--", str(config)], launcher="launch", log_dir=prepared, timeout=300)
    _assert_trained(result, prepared / "loopback")
    for log in result.launcher_logs:  # each "node" ran one rank of a 2-node job
        assert "nnodes=2, num_local_procs=1" in log
    assert "launch: no-ssh, 2 node(s), 2 rank(s) finished" in result.launcher_logs[0]


def test_two_no_ssh_launchers_train_across_network_namespaces(prepared):
    config = _run_config(prepared, "netns")
    with two_nodes() as net:
        args = ["--master-addr", net.addrs[0], "--ifname", net.ifname, "--", str(config)]
        result = run_distributed(
            args, launcher="launch", log_dir=prepared, timeout=300, wrap=net.wrap
        )
    _assert_trained(result, prepared / "netns")
    for log in result.launcher_logs:
        assert f"--master_addr={net.addrs[0]}" in log and "nnodes=2" in log


def test_mpi_run_script_trains_on_two_ranks(prepared):
    config = _run_config(prepared, "mpi")
    result = run_distributed([str(config)], launcher="mpi-script", log_dir=prepared, timeout=300)
    _assert_trained(result, prepared / "mpi")
    assert "+ exec mpirun -np 2 --hostfile" in result.launcher_logs[0]


@pytest.mark.slow
def test_sigterm_to_natscale_launch_stops_its_ranks_which_save(prepared):
    """SIGTERM to `natscale launch` alone (a job script's kill, Kubernetes): DeepSpeed's local
    runner passed it on to nothing, so the ranks trained on as orphans, unsaved."""
    config = write_run_config(
        prepared / "term.yaml",
        data_dir=prepared / "data",
        model_config=prepared / "model" / "config.json",
        out=prepared / "term",
        train={"steps": 400},
    )
    metrics = prepared / "term" / "metrics.jsonl"
    script = (
        'metrics=$1; shift; "$@" & pid=$!; '
        'while [ ! -s "$metrics" ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done; '
        "kill -TERM $pid; wait $pid"
    )
    result = run_distributed(
        ["--gpus-per-node", "2", "--", str(config)],
        launcher="launch-once",
        nprocs=2,
        log_dir=prepared,
        timeout=300,
        wrap=lambda _i, cmd: ["sh", "-c", script, "sh", str(metrics), *cmd],
    )
    assert not result.timed_out, result.format_logs()
    # natscale launch returned once its ranks had saved and stopped, not before
    summary = json.loads((prepared / "term" / "summary.json").read_text())
    assert summary["reason"] == "SIGTERM" and summary["steps"] < 400, result.format_logs()
    assert (prepared / "term" / "checkpoints" / "latest").is_file()


def _path_first(directory) -> Callable[[int, list[str]], list[str]]:
    def wrap(_index: int, cmd: list[str]) -> list[str]:
        return ["sh", "-c", 'PATH="$0:$PATH" exec "$@"', str(directory), *cmd]

    return wrap


@pytest.mark.slow
def test_pdsh_backend_trains_over_a_loopback_sshd(prepared, tmp_path):
    config = _run_config(prepared, "pdsh")
    with loopback_sshd(tmp_path / "ssh") as ssh_bin:
        hosts = tmp_path / "hosts"  # two "hosts" that are both this machine, reached over ssh
        hosts.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
        result = run_distributed(
            ["--hostfile", str(hosts), "--", str(config)],
            launcher="launch-once",
            log_dir=tmp_path,
            timeout=300,
            wrap=_path_first(ssh_bin),
        )
    _assert_trained(result, prepared / "pdsh")
    assert "launch: pdsh, 2 node(s), 2 rank(s) finished" in result.launcher_logs[0]
    env_file = (result.log_dir / ".deepspeed_env").read_text()  # what reached the ranks over ssh
    assert "GLOO_SOCKET_IFNAME=lo\n" in env_file and "NATSCALE_ENV_FILE=" in env_file


@pytest.mark.slow
def test_openmpi_backend_on_one_host(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\n")
    mpi_args = f"--allow-run-as-root --oversubscribe --output-filename {tmp_path / 'mpi-logs'}"
    result = run_distributed(
        [
            "--hostfile", str(hosts), "--backend", "openmpi", "--ifname", "lo",
            f"--launcher-args={mpi_args}", "--selftest", "--", "--steps", "3",
        ],
        launcher="launch-once",
        log_dir=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert result.ok, result.format_logs()
    log = result.launcher_logs[0]  # mpirun also forwards every rank's output here
    reports = [r for r in parse_json_lines(log) if r.get("event") == "selftest"]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert all(r["master_addr"] == "127.0.0.1" and r["world_size"] == 2 for r in reports)
    assert "launch: openmpi, 1 node(s), 2 rank(s) finished" in log
