"""Hostfiles in DeepSpeed's (MPI-style) format, read with line numbers for every error.

One host per line, ``HOSTNAME slots=N``; ``#`` starts a comment; blank lines are ignored::

    # 2 nodes with 8 GPUs each
    node-a slots=8
    node-b slots=8

DeepSpeed's own parser (``deepspeed.launcher.runner._parse_hostfile``) accepts a line when it
starts with ``NAME<space>slots=<digits>`` and ignores the rest; it reports a bad line or a
duplicate host without saying where. This parser accepts the files DeepSpeed reads correctly
(it refuses ``slots=0`` and ``slots=8x``, which DeepSpeed misreads, and a count no node has, above
:data:`MAX_SLOTS`, for which DeepSpeed would build a list that long) and names the line of each
problem, collecting all of them at once.
"""

from __future__ import annotations

import os
import re
import shlex
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from natscale.launch.findings import Finding

# DeepSpeed's rule: re.search(r'^(\S+)\s+slots=(\d+)', line.strip())
_DS_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")
# characters that DeepSpeed's --include syntax (NAME:SLOT@NAME) or pdsh's -w list (a,b,c[1-3]) treat
_BAD_NAME_CHARS = set(",@:[]")
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
# more ranks than any node runs: DeepSpeed lists range(slots) per host (a typo's 10**20 overflows)
MAX_SLOTS = 4096


@dataclass(frozen=True)
class HostEntry:
    name: str
    slots: int
    line: int  # 1-based line in the hostfile


@dataclass(frozen=True)
class Hostfile:
    path: str  # as given by the user
    hosts: tuple[HostEntry, ...]

    def resource_pool(self) -> OrderedDict[str, int]:
        """``{host: slots}`` in file order: what DeepSpeed's ``fetch_hostfile`` returns."""
        return OrderedDict((h.name, h.slots) for h in self.hosts)

    def entry(self, name: str) -> HostEntry | None:
        return next((h for h in self.hosts if h.name == name), None)

    def where(self, name: str) -> str:
        entry = self.entry(name)
        return f"{self.path}:{entry.line}" if entry else self.path


def parse_hostfile(text: str, path: str) -> tuple[Hostfile, list[Finding]]:
    """Parse hostfile ``text`` (read from ``path``); problems come back as findings."""
    findings: list[Finding] = []
    hosts: list[HostEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        entry = _parse_line(line, number, where, findings)
        if entry is None:
            continue
        if entry.name in seen:
            findings.append(
                Finding(
                    "error",
                    f"host {entry.name!r} is listed again (first on line {seen[entry.name]}); "
                    "give each host one line with its total slots",
                    where,
                )
            )
            continue
        seen[entry.name] = number
        hosts.append(entry)
    if not hosts and not findings:
        findings.append(
            Finding(
                "error",
                "no hosts: write one 'HOSTNAME slots=N' line per node (see launcher/hostfile.example)",
                path,
            )
        )
    names = [h.name for h in hosts]
    if (
        len(hosts) > 1
        and any(n in LOCAL_NAMES for n in names)
        and not all(_is_loopback(n) for n in names)
    ):
        findings.append(
            Finding(
                "warning",
                "'localhost' names a different machine on every node; in a multi-node hostfile "
                "write each node's real hostname or address",
                path,
            )
        )
    return Hostfile(path=path, hosts=tuple(hosts)), findings


def _parse_line(line: str, number: int, where: str, findings: list[Finding]) -> HostEntry | None:
    tokens = line.split()
    match = _DS_LINE.match(line)
    if not match:
        if len(tokens) == 1:
            hint = f"no slots: write '{tokens[0]} slots=N' (N = GPUs, or CPU ranks, on that node)"
        elif tokens[1].startswith("slots"):
            given = line[len(tokens[0]) :].split("#", 1)[0].strip()
            hint = f"{given!r} is not 'slots=N' with a whole number N (no spaces around '=')"
        else:
            hint = f"expected 'HOSTNAME slots=N', e.g. 'node-a slots=8'; got {line!r}"
        findings.append(Finding("error", hint, where))
        return None
    name, slots_text = match.group(1), match.group(2)
    rest = line[match.end() :]
    # slots=8x: DeepSpeed reads 8 and ignores the x; slots=8# rack 1 is a comment (DeepSpeed and
    # mpirun read 8)
    if rest and not rest[0].isspace() and rest[0] != "#":
        findings.append(
            Finding("error", f"'slots={slots_text}{rest.split()[0]}' is not a whole number", where)
        )
        return None
    if _BAD_NAME_CHARS & set(name):
        findings.append(
            Finding(
                "error",
                f"host name {name!r} contains one of , @ : [ ] (they separate hosts and slots "
                "in --include/--exclude and pdsh host lists)",
                where,
            )
        )
        return None
    slots = int(slots_text)
    if slots == 0:
        findings.append(
            Finding("error", f"{name} has slots=0; remove the line or give its device count", where)
        )
        return None
    if slots > MAX_SLOTS:
        findings.append(
            Finding(
                "error",
                f"{name} has slots={slots}, more ranks than a node runs (at most {MAX_SLOTS}); "
                "give its device count (GPUs, or CPU ranks, on that node)",
                where,
            )
        )
        return None
    extra = rest.split("#", 1)[0].split()
    if extra:
        findings.append(
            Finding(
                "warning",
                f"{' '.join(extra)!r} after slots= is ignored by DeepSpeed (MPI keys such as "
                "max_slots only matter to mpirun)",
                where,
            )
        )
    return HostEntry(name=name, slots=slots, line=number)


def _is_loopback(name: str) -> bool:
    return name in LOCAL_NAMES or name.startswith("127.")


def read_hostfile(path: str | os.PathLike) -> tuple[Hostfile | None, list[Finding]]:
    """Read and parse ``path``; (None, [error]) if it cannot be read."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Finding("error", "hostfile not found (give --hostfile PATH)", shown)]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Finding("error", f"cannot read the hostfile: {exc}", shown)]
    if text.startswith("\ufeff"):
        # DeepSpeed (and mpirun) read the file as it is: the mark becomes part of the first host
        return None, [
            Finding(
                "error",
                "the hostfile starts with a UTF-8 byte order mark (an editor adds it), which "
                "DeepSpeed and mpirun read as part of the first host name. Remove it: "
                f"sed -i '1s/^\\xEF\\xBB\\xBF//' {shlex.quote(shown)} (or save it as UTF-8 "
                "without BOM)",
                f"{shown}:1",
            )
        ]
    return parse_hostfile(text, shown)
