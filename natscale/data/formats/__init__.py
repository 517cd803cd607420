"""Trajectory formats, one module each (loader, writer, options model), behind one registry.

``load_trajectories(paths, format="nat", questions=..., prompt=...)`` is the entry point; see
each module's docstring for its record layout and options:

============== ======================================= =========================================
format         module                                  records
============== ======================================= =========================================
nat            :mod:`.nat_release`                     NAT release: trajectories + questions +
                                                       task prompt file
sharegpt       :mod:`.sharegpt`                        ``conversations: [{from, value, loss?}]``
agentinstruct  :mod:`.sharegpt` (``question_turn=1``)  AgentTuning's AgentInstruct
openai         :mod:`.openai`                          ``messages`` with ``tool_calls``/``tool``
alpaca         :mod:`.alpaca`                          ``instruction`` + ReAct ``output`` (FireAct)
fireact        :mod:`.alpaca`                          alias of alpaca
============== ======================================= =========================================

Paths are files or directories (``.json`` arrays, ``.jsonl``, ``.parquet``). Later stages only
see the canonical trajectory.

Each module also holds the format's writer (the inverse of its loader, used by ``natscale convert
data``) and its options model (the ``sources:`` entry of the prepare config, whose defaults are
the loader's). ``FORMATS`` is the registry of them all; ``SOURCE_MODELS`` the options models,
from which the prepare config builds its ``sources`` union.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from natscale.data.errors import Issues
from natscale.data.formats import alpaca, nat_release, openai, sharegpt
from natscale.data.formats.base import Format, StrictModel
from natscale.data.formats.common import keeping_empty, lazily
from natscale.data.trajectory import Trajectory

FORMATS: dict[str, Format] = {
    f.name: f for m in (nat_release, sharegpt, openai, alpaca) for f in m.ENTRIES
}
# one per module, in registry order (the order of the config's "expected tags" message)
SOURCE_MODELS: tuple[type[StrictModel], ...] = tuple(
    dict.fromkeys(f.source for f in FORMATS.values())
)


def load_trajectories(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    format: str = "nat",
    *,
    on_error: str = "raise",
    empty: str = "skip",
    issues: Issues | None = None,
    native_tools: list[str] | None = None,
    **options: Any,
) -> list[Trajectory]:
    """Load every record of ``paths`` as canonical trajectories.

    ``on_error``: ``"raise"`` (a :class:`~natscale.data.errors.DataError` naming file, record
    and field) or ``"skip"`` (count the record in ``issues`` by reason). ``empty``: trajectories
    with no turn after the question are ``"skip"``-ped (counted), an ``"error"``, or ``"keep"``-t.
    ``options`` are the format's own (e.g. ``questions=``, ``prompt=`` for ``nat``); the ones not
    given take the defaults of the format's options model. An unknown one is a ``TypeError``.
    ``native_tools``: ReAct steps become native tool calls offering these tools (any format).
    """
    fmt, skip, opts = _resolve(format, on_error, empty, options)
    issues = issues if issues is not None else Issues()
    native = _native(native_tools)
    with keeping_empty(empty == "keep"):
        trajs = fmt.load(paths, on_error=on_error, issues=issues, skip_reasons=skip, **opts)
    return [native(t) for t in trajs]


def iter_trajectories(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    format: str = "nat",
    *,
    on_error: str = "raise",
    empty: str = "skip",
    issues: Issues | None = None,
    native_tools: list[str] | None = None,
    **options: Any,
) -> Iterator[Trajectory]:
    """:func:`load_trajectories` one trajectory at a time: the records are read and parsed as
    the iterator is consumed (a large JSON / JSONL file record by record), so memory holds what
    the caller keeps. The side files (``questions``, ``prompt``) are read when it starts."""
    fmt, skip, opts = _resolve(format, on_error, empty, options)
    issues = issues if issues is not None else Issues()
    native = _native(native_tools)
    with keeping_empty(empty == "keep"), lazily():
        found = iter(fmt.load(paths, on_error=on_error, issues=issues, skip_reasons=skip, **opts))
    while True:  # the context only while a record is parsed, never across a yield
        with keeping_empty(empty == "keep"):
            traj = next(found, None)
        if traj is None:
            return
        yield native(traj)


def _native(names: list[str] | None) -> Callable[[Trajectory], Trajectory]:
    """A source's ``native_tools``: its ReAct turns as native tool calls offering these tools
    (:mod:`natscale.data.react_calls`); none: each trajectory as it is."""
    if names is None:
        return lambda traj: traj
    from natscale.data.formats.writing import Notes
    from natscale.data.react_calls import offered_tools, with_tool_calls

    tools = offered_tools(names)
    return lambda traj: with_tool_calls(traj, tools, Notes())


def _resolve(format: str, on_error: str, empty: str, options: dict[str, Any]):
    if format not in FORMATS:
        raise ValueError(f"unknown trajectory format {format!r}; expected one of {sorted(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if empty not in ("skip", "error", "keep"):
        raise ValueError(f"empty must be 'skip', 'error' or 'keep', got {empty!r}")
    fmt = FORMATS[format]
    skip = frozenset({"empty_conversation"}) if empty == "skip" else frozenset()
    return fmt, skip, fmt.loader_options(options)


__all__ = ["FORMATS", "SOURCE_MODELS", "Format", "iter_trajectories", "load_trajectories"]
