"""User tools run in a process of their own: a call over its limit is killed, not abandoned."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from natscale.agent.tools import ToolConfigError, build_tools, call_tool, close_tools

REPO = Path(__file__).resolve().parents[2]

TOOLS_MODULE = """
import os, time
calls = 0
def count(arg):
    global calls
    calls += 1
    return f"{arg}:{calls}:{os.getpid()}"
def forever(arg):
    while True:
        time.sleep(0.01)
def boom(arg):
    raise RuntimeError("bad " + arg)
def die(arg):
    os._exit(3)
def noisy(arg):
    import sys
    print("chatter")
    return "quiet" + sys.stdin.read()
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mytools.py").write_text(TOOLS_MODULE)
    (tmp_path / "badimport.py").write_text("raise OSError('index file missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the child process gets this sys.path too
    return tmp_path


def test_a_call_over_its_limit_is_killed_and_the_next_starts_afresh(user_module):
    spec = {n: f"mytools:{n}" for n in ("count", "forever", "boom", "die", "noisy")}
    tools = build_tools(["calculate", "count"], user_tools=spec)
    try:
        first = call_tool(tools["count"], "a").split(":")
        assert first[:2] == ["a", "1"] and int(first[2]) != os.getpid()  # not this process
        assert call_tool(tools["count"], "b").split(":")[:2] == ["b", "2"]  # state is kept
        assert call_tool(tools["boom"], "x") == "Error: RuntimeError: bad x"
        # its print goes to stderr, its stdin is empty: neither touches the calls' channel
        assert call_tool(tools["noisy"], "") == "quiet"
        assert call_tool(tools["count"], "c").split(":")[:2] == ["c", "3"]
        worker = tools["forever"].run
        pid = worker.pid
        start = time.monotonic()
        assert call_tool(tools["forever"], "", 0.3) == "Error: tool 'forever' timed out after 0.3 s"
        assert time.monotonic() - start < 10
        with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
            os.kill(pid, 0)
        assert call_tool(tools["die"], "") == "Error: tool 'die' exited with code 3"
        assert call_tool(tools["die"], "") == "Error: tool 'die' exited with code 3"  # restarted
        assert call_tool(tools["calculate"], "6 * 7") == "42"  # built-ins run here
    finally:
        close_tools(tools)
    assert all(t.run.pid is None for n, t in tools.items() if n in spec)


FLAKY_MODULE = """
import os, pathlib
busy = pathlib.Path(__file__).with_name("busy")  # held by a process that was killed
if busy.exists():
    raise RuntimeError("resource busy")
busy.touch()
def lookup(arg):
    if arg == "crash":
        os._exit(3)
    return "ok:" + arg
"""


def test_a_tool_that_cannot_restart_is_an_error_observation(user_module):
    """A restart after a crash that fails is the call's observation, not an exception out of
    the eval; a later call tries to start the tool again."""
    (user_module / "flaky.py").write_text(FLAKY_MODULE)
    tools = build_tools([], user_tools={"lookup": "flaky:lookup"})
    try:
        assert call_tool(tools["lookup"], "x") == "ok:x"
        assert call_tool(tools["lookup"], "crash") == "Error: tool 'lookup' exited with code 3"
        assert call_tool(tools["lookup"], "y") == (
            "Error: tool 'lookup' could not be restarted "
            "(cannot import 'flaky' (RuntimeError: resource busy))"
        )
        assert tools["lookup"].run.pid is None
        (user_module / "busy").unlink()
        assert call_tool(tools["lookup"], "z") == "ok:z"
    finally:
        close_tools(tools)


def test_bad_user_tools_are_refused_when_the_tools_are_built(user_module):
    with pytest.raises(ToolConfigError, match=r"'x'.*cannot import 'badimport' \(OSError: index"):
        build_tools([], user_tools={"x": "badimport:run"})
    with pytest.raises(ToolConfigError, match="cannot import 'no_such_module'"):
        build_tools([], user_tools={"x": "no_such_module:run"})
    with pytest.raises(ToolConfigError, match="not 'module:function'"):
        build_tools([], user_tools={"x": "mytools"})


def test_the_process_exits_while_a_tool_call_never_returns(user_module):
    # a stuck call in a thread kept the interpreter from exiting (the pool joins its threads)
    script = textwrap.dedent(
        """
        from natscale.agent.tools import build_tools, call_tool
        tools = build_tools([], user_tools={"f": "mytools:forever", "c": "mytools:count"})
        print(call_tool(tools["f"], "", 0.2))
        print(call_tool(tools["f"], "", 0.2))
        print(call_tool(tools["c"], "z"))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(user_module)]))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["Error: tool 'f' timed out after 0.2 s"] * 2
    assert lines[2].startswith("z:1:")


@pytest.mark.parametrize("name", ["finish", "look[up]", " lookup", "look\nup", ""])
def test_user_tool_names_no_action_can_call_are_refused_before_starting(name):
    with pytest.raises(ToolConfigError, match=r"tools\.user"):
        build_tools([], user_tools={name: "natscale.agent.calculator:calculate"})


def test_a_tool_module_in_the_working_directory_imports_under_the_natscale_script(
    tmp_path, monkeypatch
):
    # the `natscale` console script's sys.path starts with its bin folder, not the working
    # directory (`python -m natscale.cli` has it): the tool's process gets it either way
    (tmp_path / "cwdtools.py").write_text("def echo(arg):\n    return 'echo ' + arg\n")
    monkeypatch.chdir(tmp_path)
    here = {str(tmp_path), "", "."}
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in here])
    tools = build_tools(["echo"], user_tools={"echo": "cwdtools:echo"})
    try:
        assert call_tool(tools["echo"], "hi") == "echo hi"
    finally:
        close_tools(tools)
