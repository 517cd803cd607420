"""Run the ``deepspeed`` launcher of a plan on this node and pass signals on to it."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from natscale.launch.envfile import write_env_file
from natscale.launch.plan import LaunchPlan

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_plan(plan: LaunchPlan, environ: Mapping[str, str]) -> int:
    """Write the env file (multi-node runners), start the launcher, wait; its exit status.

    SIGINT/SIGTERM/SIGHUP are passed to the launcher, which stops its ranks (DeepSpeed's pdsh
    runner also kills the remote ones). A launcher killed by signal N gives 128 + N, as a shell does.
    """
    if plan.env_file is not None:
        write_env_file(plan.env_file, plan.env)
    if plan.options.rank_logs:
        # DeepSpeed's launch.py checks, then creates the directory: two no-ssh nodes sharing a
        # filesystem can race there, and the loser dies before it starts a rank
        Path(plan.options.rank_logs).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(plan.deepspeed_argv, env=plan.launcher_env(environ))

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
