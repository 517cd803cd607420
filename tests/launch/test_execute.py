"""natscale.launch.execute: what the deepspeed runner of a real launch is handed."""

from __future__ import annotations

import inspect
import sys

from natscale.launch.execute import run_plan
from natscale.launch.options import LaunchOptions
from natscale.launch.plan import build_plan

# stands in for deepspeed's runner: a second launch from the same folder rewrites ./.deepspeed_env
# before this one has read it, then it reads its env files as DeepSpeed's runner does (the test
# checks that rule in deepspeed.launcher.runner: importing it here would take seconds)
_FAKE_RUNNER = """
import os, sys
from pathlib import Path
Path(".deepspeed_env").write_text("MASTER_ADDR=node-c\\nMASTER_PORT=29777\\n")
DEEPSPEED_ENVIRONMENT_NAME = os.getenv("DS_ENV_FILE", ".deepspeed_env")
DEEPSPEED_ENVIRONMENT_PATHS = [os.path.expanduser("~"), "."]
seen = {}
for folder in DEEPSPEED_ENVIRONMENT_PATHS:
    path = os.path.join(folder, DEEPSPEED_ENVIRONMENT_NAME)
    if os.path.isfile(path):
        for line in open(path).readlines():
            key, value = line.split("=", maxsplit=1)
            seen[key.strip()] = value.strip()
Path(sys.argv[1]).write_text("".join(f"{k}={v}\\n" for k, v in seen.items()))
"""


def test_the_runner_reads_this_launchs_environment_not_a_later_launchs(tmp_path, monkeypatch):
    """Two launches from one folder both wrote ./.deepspeed_env, and each runner read it seconds
    later: launch A's ranks got launch B's MASTER_ADDR / MASTER_PORT."""
    from deepspeed.launcher import runner

    source = inspect.getsource(runner)
    assert 'DEEPSPEED_ENVIRONMENT_NAME = os.getenv("DS_ENV_FILE", ".deepspeed_env")' in source
    assert "DEEPSPEED_ENVIRONMENT_PATHS = [os.path.expanduser(\"~\"), '.']" in source
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".deepspeed_env").write_text("FROM_HOME=1\nNCCL_DEBUG=WARN\n")
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "hosts").write_text("node-a slots=1\nnode-b slots=1\n")
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(home), "NCCL_DEBUG": "INFO"}
    opts = LaunchOptions(["run.yaml"], backend="slurm", hostfile="hosts", ifname="lo")
    plan, findings = build_plan(opts, environ, tmp_path)
    assert plan is not None, findings
    seen_file = tmp_path / "seen"
    plan.deepspeed_argv = [sys.executable, "-c", _FAKE_RUNNER, str(seen_file)]
    assert run_plan(plan, environ) == 0
    seen = dict(line.split("=", 1) for line in seen_file.read_text().splitlines())
    assert (seen["MASTER_ADDR"], seen["MASTER_PORT"]) == ("node-a", "29500")
    assert seen["GLOO_SOCKET_IFNAME"] == "lo" and seen["NATSCALE_ENV_FILE"]
    # ~/.deepspeed_env is still read first, and the launch's own values still beat it
    assert seen["FROM_HOME"] == "1" and seen["NCCL_DEBUG"] == "INFO"
    # the launch's copy is gone; ./.deepspeed_env stays (what the other launch wrote last)
    assert sorted(p.name for p in tmp_path.glob(".deepspeed_env*")) == [".deepspeed_env"]
