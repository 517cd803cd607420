"""User tools in a child process of their own, so that a call over its time limit is killed.

A user tool (``module:function``) is arbitrary code: it may loop forever, block on I/O or crash
the interpreter. Run in the evaluating process, a stuck call could only be abandoned (Python
cannot kill a thread): it would keep running, hold its worker thread and keep the process from
exiting at the end. So each user tool runs in a child process, one call at a time. A call over
its limit kills the child and the next call starts a new one; a call that kills the child (a
crash, ``sys.exit``) is an error observation too. The child imports the tool, so a bad
``module:function`` is reported when the tools are built, before any episode runs, and the
evaluating process never imports user code.

The child is a fresh interpreter (``python -c``, with this process's ``sys.path`` and working
directory, the working directory last on its path as under ``python -m``, so that a tool module
beside the user's config imports under the ``natscale`` command too; nothing of its torch or
model state), not :mod:`multiprocessing`, which would import
the caller's main script again. They talk in JSON lines over the child's stdin and a private
copy of its stdout; what the tool prints goes to stderr, and its stdin is empty.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

START_TIMEOUT_S = 120.0  # importing the tool's module (a corpus load, say) may take a while

_CHILD = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from natscale.agent.tool_worker import serve; serve(sys.argv[2])"
)


def child_path() -> list[str]:
    """The tool process's ``sys.path``: this one's, with the working directory added last when
    it is not on it (``python -m`` has it first; the ``natscale`` script has its bin folder)."""
    here = [os.path.abspath(p or os.curdir) for p in sys.path]
    cwd = os.getcwd()
    return sys.path + ([] if cwd in here else [cwd])


class ToolStartError(ValueError):
    """A user tool's process cannot import or find its function (the message says which;
    ``reason`` is the why alone)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


def parse_spec(name: str, spec: str) -> tuple[str, str]:
    """``module:function`` split in two; :class:`ToolStartError` if it is not of that form."""
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise ToolStartError(f"tool {name!r}: {spec!r} is not 'module:function'")
    return module_name, func_name


def serve(spec: str) -> None:
    """The child: import the tool, say ``ready`` (or why not), then answer calls until EOF."""
    inbox = os.fdopen(os.dup(0), "r", encoding="utf-8")
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    # the tool's prints go to stderr and its reads find nothing: neither touches the channel
    os.dup2(2, 1)
    nothing = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nothing, 0)
    os.close(nothing)
    # Ctrl-C reaches the whole process group: the evaluating process decides when this one ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def reply(**message: Any) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    module_name, func_name = parse_spec("", spec)  # checked by the parent already
    try:
        func = getattr(importlib.import_module(module_name), func_name, None)
    except BaseException as exc:  # an import runs user code: anything can come out of it
        reply(error=f"cannot import {module_name!r} ({type(exc).__name__}: {exc})")
        return
    if not callable(func):
        reply(error=f"{module_name!r} has no function {func_name!r}")
        return
    reply(ready=True)
    for line in inbox:
        request = json.loads(line)
        if "schema" in request:
            reply(**_schema_of(func))
            continue
        try:
            if "arguments" in request:  # a native tool call: its JSON object as keywords
                result = str(func(**request["arguments"]))
            else:
                result = str(func(request["argument"]))
        except Exception as exc:  # a tool error is an observation, as in the paper
            reply(raised=f"{type(exc).__name__}: {exc}")
        else:
            reply(ok=result)


def _schema_of(func: Any) -> dict[str, Any]:
    """The function's OpenAI tool schema from its type hints and Google-style docstring
    (transformers' ``get_json_schema``, what ``apply_chat_template(tools=[func])`` uses)."""
    try:
        from transformers.utils import get_json_schema

        return {"schema": get_json_schema(func)}
    except Exception as exc:  # the docstring or hints do not describe the function
        return {"raised": f"{type(exc).__name__}: {exc}"}


class ToolWorker:
    """One user tool's child process; :meth:`call` gives the observation text of one call."""

    def __init__(self, name: str, spec: str, *, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.name, self.spec = name, spec
        parse_spec(name, spec)  # a malformed spec is refused before a process starts
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        self._buffer = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(child_path()), self.spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        message = self._read(self.start_timeout_s)
        why = None
        if message is None:
            why = f"its process did not start within {self.start_timeout_s:g} s"
        elif "error" in message:
            why = message["error"]
        elif "ready" not in message:
            why = f"its process exited with code {self._proc.wait()} while importing"
        if why is not None:
            self.close()
            raise ToolStartError(f"tool {self.name!r} ({self.spec}): {why}", why)

    def _read(self, timeout_s: float | None) -> dict[str, Any] | None:
        """The child's next message; ``{}`` if it exited, None if ``timeout_s`` ran out."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return {}
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def call(self, argument: str | dict[str, Any], timeout_s: float | None) -> str:
        """Run the tool on ``argument`` (a dict: a native call's arguments, passed as keywords):
        its result, or ``Error: ...`` if it raised, ran over ``timeout_s`` (the process is killed;
        None: no limit), its process died, or a new process (after a timeout or a crash) could
        not start; the next call tries to start it again."""
        key = "arguments" if isinstance(argument, dict) else "argument"
        try:
            message = self._ask({key: argument}, timeout_s)
        except ToolStartError as exc:  # the restart failed: an observation, the eval goes on
            return f"Error: tool {self.name!r} could not be restarted ({exc.reason})"
        if message is None:
            self.close()
            return f"Error: tool {self.name!r} timed out after {timeout_s:g} s"
        if not message:
            code = self._proc.wait()
            self.close()
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            return f"Error: tool {self.name!r} {how}"
        return message["ok"] if "ok" in message else f"Error: {message['raised']}"

    def schema(self) -> dict[str, Any]:
        """The tool's OpenAI schema, from its function's type hints and docstring;
        :class:`ToolStartError` says what transformers' ``get_json_schema`` missed."""
        message = self._ask({"schema": True}, self.start_timeout_s)
        if message and "schema" in message:
            return message["schema"]
        why = message.get("raised") if message else None
        if why is None:
            self.close()
            why = "its process died" if message == {} else "no answer in time"
        raise ToolStartError(
            f"tool {self.name!r} ({self.spec}): no tool schema for loop.protocol: tool_calls "
            f"({why}); give the function type hints and a Google-style docstring with an "
            "'Args:' line per parameter, or its schema in tools.schemas"
        )

    def _ask(self, request: dict[str, Any], timeout_s: float | None) -> dict[str, Any] | None:
        """Send one request; the reply, ``{}`` if the process died, None past ``timeout_s``."""
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
        except BrokenPipeError:  # died since the check above: the read finds it gone
            pass
        return self._read(timeout_s)

    def __call__(self, argument: str) -> str:
        return self.call(argument, None)

    def close(self) -> None:
        """Kill the child (if any); a later :meth:`call` starts a new one."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()

    def __del__(self) -> None:
        # at interpreter exit, what close() needs may be gone already
        with contextlib.suppress(Exception):
            self.close()
