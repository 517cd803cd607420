"""Run the ``deepspeed`` launcher of a plan on this node and pass signals on to it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from natscale.launch.envfile import write_env_file, write_launch_env_file
from natscale.launch.plan import LaunchPlan, launch_env_text

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_plan(plan: LaunchPlan, environ: Mapping[str, str]) -> int:
    """Write the env file (multi-node runners), start the launcher, wait; its exit status.

    SIGINT/SIGTERM/SIGHUP are passed to the launcher (local and no-ssh: to its whole process
    group, ranks included, and the ranks are waited for), which stops its ranks (DeepSpeed's
    pdsh runner also kills the remote ones). A launcher killed by signal N gives 128 + N, as a shell does.
    """
    env = plan.launcher_env(environ)
    launch_file = None
    if plan.env_file is not None:
        write_env_file(plan.env_file, plan.env)
        # the runner reads its env file a few seconds after it starts; by then a second launch
        # from this folder may have rewritten ./.deepspeed_env (its master address, its port):
        # it gets a copy of its own, with ~/.deepspeed_env's lines first, as it would read them
        text = launch_env_text(env, plan.env)
        launch_file = write_launch_env_file(plan.env_file.parent, plan.env_file.name, text)
        # DeepSpeed reads ~/$DS_ENV_FILE (absent) and ./$DS_ENV_FILE: relative, so it reads it once
        env["DS_ENV_FILE"] = os.path.relpath(launch_file)
    try:
        return _run(plan, env)
    finally:
        if launch_file is not None:
            launch_file.unlink(missing_ok=True)


def _run(plan: LaunchPlan, env: dict[str, str]) -> int:
    if plan.options.rank_logs:
        # DeepSpeed's launch.py checks, then creates the directory: two no-ssh nodes sharing a
        # filesystem can race there, and the loser dies before it starts a rank
        Path(plan.options.rank_logs).mkdir(parents=True, exist_ok=True)
    # DeepSpeed's runner passes no signal on to a launch.py it started on this node (only its
    # pdsh runner has a handler): killed, it left launch.py and the ranks training as orphans.
    # Local and no-ssh runs get a process group of their own, signalled as a whole, and are
    # waited for until every rank has stopped (saved its checkpoint).
    own_group = plan.options.backend in ("local", "no-ssh")
    proc = subprocess.Popen(plan.deepspeed_argv, env=env, start_new_session=own_group)

    def forward(signum, _frame):
        if own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        code = proc.wait()
        if own_group:
            _wait_for_group(proc.pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _wait_for_group(pgid: int, limit_s: float = 90.0) -> None:
    """Until no process of group ``pgid`` is left: launch.py kills its ranks 30 s after it is
    signalled, so this ends; after ``limit_s`` it says which group is left and returns."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap what was handed to us, if anything
            os.waitpid(-pgid, os.WNOHANG)
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.2)
    print(
        f"launch: processes of this launch are still running {limit_s:.0f} s after the launcher "
        f"ended (process group {pgid}); stop them with: kill -TERM -{pgid}",
        file=sys.stderr,
    )
