"""Agent tools and the name -> tool registry the rollout loop calls.

Built in:

- ``calculate[expression]``: the safe AST calculator (:mod:`natscale.agent.calculator`).
- ``search[query]``: BM25 (the ``bm25s`` library) over a local corpus, a JSONL file of
  ``{"title": ..., "text": ...}`` lines; the observation is the paper's top-3 snippets,
  ``#1: {title}: {text} #2: ... #3: ...`` (each text cut to :data:`SNIPPET_CHARS`).
- ``finish[answer]``: ends the episode; the loop handles it (its observation is
  ``Episode finished``).

User tools are ``module:function`` strings: a function taking the argument string and returning
the observation string. Each runs in a child process of its own, where a call over the time
limit is killed (:mod:`natscale.agent.tool_worker`). An exception or a timeout becomes the
observation ``Error: ...``, as in the paper.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from natscale.agent.calculator import calculate
from natscale.agent.react import CALCULATE, FINISH, SEARCH
from natscale.agent.tool_calls import BUILTIN_SCHEMAS, single_parameter
from natscale.agent.tool_worker import ToolStartError, ToolWorker

SNIPPET_CHARS = 300
TOP_K = 3


class ToolConfigError(ValueError):
    """A tool cannot be built from the configuration (unknown name, bad corpus, bad import)."""


@dataclass(frozen=True)
class Tool:
    name: str
    run: Callable[[str], str]
    schema: dict[str, Any] | None = None  # OpenAI form; set for loop.protocol: tool_calls


def finish_tool(argument: str) -> str:
    from natscale.agent.react import FINISH_OBSERVATION

    return FINISH_OBSERVATION


# -- search -----------------------------------------------------------------------------------
def load_corpus(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a JSONL corpus of ``{"title", "text"}`` lines; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ToolConfigError(f"{path}: search corpus not found (a JSONL file of title/text)")
    docs: list[dict[str, str]] = []
    with path.open(encoding="utf-8", errors="strict") as fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError as exc:
            raise ToolConfigError(f"{path}: not UTF-8 text ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ToolConfigError(
                f"{path}:{lineno}: not JSONL ({exc.msg}); the corpus must hold one JSON object "
                'per line, {"title": ..., "text": ...}'
            ) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ToolConfigError(f"{path}:{lineno}: expected an object with a string 'text'")
        title = rec.get("title", "")
        docs.append({"title": str(title) if title is not None else "", "text": rec["text"]})
    if not docs:
        raise ToolConfigError(f"{path}: the search corpus is empty")
    return docs


class BM25Search:
    """``search[query]`` over a corpus: BM25 top :data:`TOP_K` snippets."""

    def __init__(self, docs: list[dict[str, str]], k: int = TOP_K) -> None:
        import bm25s

        self.docs, self.k = docs, k
        self._bm25s = bm25s
        texts = [f"{d['title']} {d['text']}" for d in docs]
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(texts, show_progress=False), show_progress=False)

    def __call__(self, query: str) -> str:
        tokens = self._bm25s.tokenize([query], return_ids=False, show_progress=False)
        if not tokens or not tokens[0]:
            return "Error: empty search query"
        k = min(self.k, len(self.docs))
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        hits = [int(i) for i, s in zip(docs[0], scores[0], strict=True) if s > 0]
        if not hits:
            return f"Could not find any result for {query!r}."
        parts = []
        for rank, i in enumerate(hits, 1):
            doc = self.docs[i]
            text = doc["text"]
            if len(text) > SNIPPET_CHARS:
                text = text[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " ..."
            head = f"{doc['title']}: " if doc["title"] else ""
            parts.append(f"#{rank}: {head}{text}")
        return " ".join(parts)


# -- registry ---------------------------------------------------------------------------------
BUILTIN_TOOLS = (CALCULATE, SEARCH, FINISH)


def import_tool(name: str, spec: str) -> Tool:
    """A user tool from ``module:function``, run in a child process of its own
    (:mod:`natscale.agent.tool_worker`); :func:`close_tools` ends it."""
    try:
        return Tool(name, ToolWorker(name, spec))
    except ToolStartError as exc:
        raise ToolConfigError(str(exc)) from None


def _check_user_tool_name(name: str) -> None:
    """Refuse a user tool name an action ``name[argument]`` could never call."""
    if name == FINISH:
        raise ToolConfigError(
            f"tools.user: {FINISH!r} is the action that ends an episode; name your tool otherwise"
        )
    if not name or name != name.strip() or any(c in name for c in "[]\n\r"):
        raise ToolConfigError(
            f"tools.user: tool name {name!r} cannot be called as 'name[argument]': use a name "
            "without '[', ']', line breaks or surrounding spaces, e.g. 'lookup'"
        )


def build_tools(
    names: list[str],
    *,
    corpus: str | os.PathLike | None = None,
    user_tools: dict[str, str] | None = None,
) -> dict[str, Tool]:
    """The registry for ``names`` and every user tool (``finish`` is always included); a user
    tool of a built-in's name replaces it. :func:`close_tools` ends the user tools' processes."""
    user_tools = user_tools or {}
    for name in user_tools:
        _check_user_tool_name(name)
    registry: dict[str, Tool] = {FINISH: Tool(FINISH, finish_tool)}
    for name in names:
        if name in user_tools or name == FINISH:
            continue
        if name == CALCULATE:
            registry[name] = Tool(name, calculate)
        elif name == SEARCH:
            if corpus is None:
                raise ToolConfigError("tool 'search' needs a corpus: set tools.corpus (JSONL)")
            registry[name] = Tool(name, BM25Search(load_corpus(corpus)))
        else:
            known = sorted(set(BUILTIN_TOOLS) | set(user_tools))
            raise ToolConfigError(
                f"unknown tool {name!r}; known tools are {known} "
                "(add your own under tools.user as name: 'module:function')"
            )
    try:  # every name is known: now start the user tools' processes
        for name, spec in user_tools.items():
            registry[name] = import_tool(name, spec)
    except ToolConfigError:
        close_tools(registry)
        raise
    return registry


def call_tool(tool: Tool, argument: str, timeout_s: float | None = 10.0) -> str:
    """Run ``tool`` on ``argument``; an exception gives the observation ``Error: ...``.

    A user tool (a :class:`ToolWorker`) runs in its process and is killed past ``timeout_s``
    (None: no limit), which gives ``Error: tool ... timed out``. Other tools (the built-ins, or a
    :class:`Tool` made in Python) run in this process without a time limit: the built-ins are
    bounded by construction (the calculator's size limits, BM25 over a fixed corpus).
    """
    if isinstance(tool.run, ToolWorker):
        return tool.run.call(argument, timeout_s)
    try:
        return str(tool.run(argument))
    except Exception as exc:  # a tool error is an observation, as in the paper
        return f"Error: {type(exc).__name__}: {exc}"


def load_schemas(source: str | os.PathLike | list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``tools.schemas``: OpenAI tool schemas (a list, as a chat template's ``tools``, or bare
    ``{"name", "description", "parameters"}`` objects) in a JSON file or given as the list, by
    name."""
    from natscale.data.render.tools import normalize_tools

    where = "tools.schemas" if isinstance(source, list) else f"tools.schemas: {source}"
    if isinstance(source, list):
        raw: Any = source
    else:
        try:
            raw = json.loads(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ToolConfigError(f"{where}: file not found") from None
        except (OSError, ValueError) as exc:
            raise ToolConfigError(f"{where}: not a JSON file ({exc})") from None
    try:
        schemas = normalize_tools(raw)
    except ValueError as exc:
        raise ToolConfigError(f"{where}: {exc}") from None
    return {s["function"]["name"]: s for s in schemas}


def with_schemas(
    registry: dict[str, Tool], overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, Tool]:
    """``registry`` with each tool's OpenAI schema (for ``loop.protocol: tool_calls``): the one in
    ``overrides`` (``tools.schemas``, each named as its tool), else a built-in's own, else the
    one a user tool's function describes (its type hints and docstring), named as the tool is
    configured (``tools.user``'s key, not the function's name). ``finish`` comes last."""
    overrides = overrides or {}
    extra = sorted(set(overrides) - set(registry))
    if extra:
        raise ToolConfigError(
            f"tools.schemas: schemas for tools that are not configured: {extra}; the tools are "
            f"{sorted(registry)}"
        )
    out: dict[str, Tool] = {}
    for name in sorted(registry, key=lambda n: n == FINISH):
        tool = registry[name]
        worker = isinstance(tool.run, ToolWorker)
        if name in overrides:
            schema = overrides[name]
            given = schema["function"]["name"]
            if given != name:
                raise ToolConfigError(
                    f"tools.schemas: the schema for tool {name!r} is named {given!r}; a tool is "
                    "offered and called under its configured name"
                )
        elif worker:
            try:
                derived = tool.run.schema()
            except ToolStartError as exc:
                raise ToolConfigError(str(exc)) from None
            # offered under its tools.user name (what the registry calls), not its function's
            schema = {**derived, "function": {**derived["function"], "name": name}}
        else:
            schema = BUILTIN_SCHEMAS[name]
        if not worker and single_parameter(schema) is None:
            raise ToolConfigError(
                f"tools.schemas: built-in tool {name!r} takes one string argument; its schema "
                "must have exactly one parameter"
            )
        out[name] = replace(tool, schema=schema)
    return out


def argument_error(name: str, param: str | None, arguments: dict[str, Any]) -> str:
    """The observation for a call of a one-argument tool whose arguments are not ``{param}``."""
    return (
        f"Error: {name} takes one argument, {param!r}; the call gave {sorted(arguments) or 'none'}"
    )


def call_tool_with(tool: Tool, arguments: dict[str, Any], timeout_s: float | None = 10.0) -> str:
    """Run ``tool`` on a native call's ``arguments`` (a JSON object): a user tool gets them as
    keyword arguments, a built-in its one parameter's value. A call that does not fit is the
    observation ``Error: ...``."""
    if isinstance(tool.run, ToolWorker):
        return tool.run.call(arguments, timeout_s)
    param = single_parameter(tool.schema) if tool.schema else None
    if param is None or set(arguments) != {param}:
        return argument_error(tool.name, param, arguments)
    value = arguments[param]
    return call_tool(tool, value if isinstance(value, str) else json.dumps(value), timeout_s)


def close_tools(tools: dict[str, Tool]) -> None:
    """End the processes of the user tools in ``tools`` (built-ins have none)."""
    for tool in tools.values():
        if isinstance(tool.run, ToolWorker):
            tool.run.close()
