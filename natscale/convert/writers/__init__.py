"""One trajectory writer per format the data pipeline reads (``natscale.data.formats``).

``WRITERS[name](trajectories, out_path, notes) -> {path: JSON content}``: the files to write
(``OUT`` itself, plus side files for ``nat``). Lists go to ``.jsonl`` as one record per line and
to ``.json`` as one array.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from natscale.convert.writers.alpaca import alpaca_record
from natscale.convert.writers.common import Notes
from natscale.convert.writers.nat import nat_files
from natscale.convert.writers.openai import openai_record
from natscale.convert.writers.sharegpt import agentinstruct_record, sharegpt_record
from natscale.data.trajectory import Trajectory

Writer = Callable[[list[Trajectory], Path, Notes], dict[Path, Any]]


def _per_record(make: Callable[[Trajectory, Notes], dict[str, Any]]) -> Writer:
    def write(trajs: list[Trajectory], out: Path, notes: Notes) -> dict[Path, Any]:
        return {out: [make(t, notes) for t in trajs]}

    return write


WRITERS: dict[str, Writer] = {
    "nat": nat_files,
    "sharegpt": _per_record(sharegpt_record),
    "agentinstruct": _per_record(agentinstruct_record),
    "openai": _per_record(openai_record),
    "alpaca": _per_record(alpaca_record),
    "fireact": _per_record(alpaca_record),
}

__all__ = ["WRITERS", "Notes"]
