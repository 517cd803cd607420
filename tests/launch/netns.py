"""Two emulated nodes on one machine: network namespaces joined by a veth pair (root only).

Each namespace gets its own loopback and one end of the pair, renamed ``natnet`` in both so one
``--ifname natnet`` fits every node; the addresses (10.77.0.1/24, 10.77.0.2/24) exist only inside
the namespaces, so nothing leaves them. The namespace names carry this process's pid and a random
tag; everything is removed in a ``finally`` (deleting a namespace deletes its veth end, and the
pair goes with it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

IFNAME = "natnet"
SUBNET = "10.77.0"


@dataclass(frozen=True)
class TwoNodes:
    namespaces: tuple[str, str]
    addrs: tuple[str, str]
    ifname: str = IFNAME

    def wrap(self, index: int, cmd: list[str]) -> list[str]:
        """``cmd`` run inside namespace ``index`` under its own UTS hostname ``nodeI``."""
        set_hostname = 'hostname "$0" && exec "$@"'
        return [
            "ip", "netns", "exec", self.namespaces[index],
            "unshare", "--uts", "sh", "-c", set_hostname, f"node{index}", *cmd,
        ]  # fmt: skip


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@contextlib.contextmanager
def two_nodes() -> Iterator[TwoNodes]:
    """Create the namespaces and the veth pair; skip the test where that is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("needs `ip` (iproute2) and `unshare` (util-linux)")
    tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    namespaces = (f"natscale_n0_{tag}", f"natscale_n1_{tag}")
    ends = (f"nsa{tag}", f"nsb{tag}")  # at most 15 characters: nsa + 5 digits + 4 hex
    addrs = (f"{SUBNET}.1", f"{SUBNET}.2")
    created: list[str] = []
    try:
        try:
            _ip("netns", "add", namespaces[0])
        except RuntimeError as exc:
            pytest.skip(f"cannot create a network namespace here: {exc}")
        created.append(namespaces[0])
        _ip("netns", "add", namespaces[1])
        created.append(namespaces[1])
        _ip("link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
        for ns, end, addr in zip(namespaces, ends, addrs, strict=True):
            _ip("link", "set", end, "netns", ns)
            _ip("-n", ns, "link", "set", end, "name", IFNAME)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", IFNAME)
            _ip("-n", ns, "link", "set", IFNAME, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield TwoNodes(namespaces=namespaces, addrs=addrs)
    finally:
        for ns in created:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", ns)
        with contextlib.suppress(RuntimeError):  # only if it never moved into a namespace
            _ip("link", "del", ends[0])
