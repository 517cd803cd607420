"""Real launches on this machine: `natscale launch` as two no-ssh "nodes" on loopback, the same
across two network namespaces (root), and launcher/mpi/run.sh under mpirun.
"""

from __future__ import annotations

import pytest

from tests.launch.netns import two_nodes
from tests.mp.harness import assert_ok, run_distributed

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
