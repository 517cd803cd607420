"""Trajectory loaders, one module per input format, all producing canonical ``Trajectory``.

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

Paths are files or directories (``.json`` arrays, ``.jsonl``, ``.parquet``). Later stages and
the per-format writers of ``natscale convert data`` only see the canonical trajectory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from natscale.data.errors import Issues
from natscale.data.formats import alpaca, nat_release, openai, sharegpt
from natscale.data.trajectory import Trajectory

# name -> (loader, default options)
FORMATS: dict[str, tuple[Callable[..., list[Trajectory]], dict[str, Any]]] = {
    "nat": (nat_release.load, {}),
    "sharegpt": (sharegpt.load, {}),
    "agentinstruct": (sharegpt.load, {"question_turn": 1}),
    "openai": (openai.load, {}),
    "alpaca": (alpaca.load, {}),
    "fireact": (alpaca.load, {}),
}


def load_trajectories(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    format: str = "nat",
    *,
    on_error: str = "raise",
    empty: str = "skip",
    issues: Issues | None = None,
    **options: Any,
) -> list[Trajectory]:
    """Load every record of ``paths`` as canonical trajectories.

    ``on_error``: ``"raise"`` (a :class:`~natscale.data.errors.DataError` naming file, record
    and field) or ``"skip"`` (count the record in ``issues`` by reason). ``empty``: trajectories
    with no turn after the question are ``"skip"``-ped (counted) or an ``"error"``.
    ``options`` are the format's own (e.g. ``questions=``, ``prompt=`` for ``nat``).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown trajectory format {format!r}; expected one of {sorted(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if empty not in ("skip", "error"):
        raise ValueError(f"empty must be 'skip' or 'error', got {empty!r}")
    loader, defaults = FORMATS[format]
    issues = issues if issues is not None else Issues()
    skip = frozenset({"empty_conversation"}) if empty == "skip" else frozenset()
    return loader(
        paths, on_error=on_error, issues=issues, skip_reasons=skip, **{**defaults, **options}
    )


__all__ = ["FORMATS", "load_trajectories"]
