"""Real launches on this machine: `natscale launch` as two no-ssh "nodes" on loopback, the same
across two network namespaces (root), and launcher/mpi/run.sh under mpirun.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.launch.netns import two_nodes
from tests.launch.sshd import loopback_sshd
from tests.mp.harness import assert_ok, parse_json_lines, run_distributed

pytestmark = pytest.mark.multiproc


def test_two_no_ssh_launchers_on_loopback(tmp_path):
    result = run_distributed(
        ["--selftest", "--", "--steps", "3"], launcher="launch", log_dir=tmp_path, timeout=300
    )
    assert_ok(result)
    for rank in (0, 1):
        report = result.last(rank, "selftest")
        assert report["world_size"] == 2 and report["local_rank"] == 0
    assert "launch: no-ssh, 2 node(s), 2 rank(s) finished" in result.launcher_logs[0]


def test_two_no_ssh_launchers_across_network_namespaces(tmp_path):
    with two_nodes() as net:
        args = ["--master-addr", net.addrs[0], "--ifname", net.ifname]
        result = run_distributed(
            [*args, "--selftest", "--", "--steps", "3"],
            launcher="launch",
            log_dir=tmp_path,
            timeout=300,
            wrap=net.wrap,
        )
    assert_ok(result)
    reports = [result.last(rank, "selftest") for rank in (0, 1)]
    assert [r["hostname"] for r in reports] == ["node0", "node1"]
    assert all(r["master_addr"] == net.addrs[0] and r["world_size"] == 2 for r in reports)


def test_mpi_run_script_two_ranks(tmp_path):
    result = run_distributed(
        ["--steps", "3"],
        launcher="mpi-script",
        log_dir=tmp_path,
        timeout=300,
        env={"NATSCALE_COMMAND": "selftest"},
    )
    assert_ok(result)
    assert [result.last(r, "selftest")["rank"] for r in (0, 1)] == [0, 1]


def _path_first(directory) -> Callable[[int, list[str]], list[str]]:
    def wrap(_index: int, cmd: list[str]) -> list[str]:
        return ["sh", "-c", 'PATH="$0:$PATH" exec "$@"', str(directory), *cmd]

    return wrap


@pytest.mark.slow
def test_pdsh_backend_over_a_loopback_sshd(tmp_path):
    with loopback_sshd(tmp_path / "ssh") as ssh_bin:
        hosts = tmp_path / "hosts"  # two "hosts" that are both this machine, reached over ssh
        hosts.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
        result = run_distributed(
            ["--hostfile", str(hosts), "--selftest", "--", "--steps", "3"],
            launcher="launch-once",
            log_dir=tmp_path,
            timeout=300,
            wrap=_path_first(ssh_bin),
        )
    assert_ok(result)
    reports = [result.last(rank, "selftest") for rank in (0, 1)]
    assert [r["local_rank"] for r in reports] == [0, 0] and reports[0]["world_size"] == 2
    log = result.launcher_logs[0]
    assert "launch: pdsh, 2 node(s), 2 rank(s) finished" in log
    env_file = (result.log_dir / ".deepspeed_env").read_text()
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
