"""Hostfile parsing: what DeepSpeed accepts, and every bad line named with its line number."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from natscale.launch.hostfile import parse_hostfile, read_hostfile

GOOD = """\
# two nodes
node-a slots=8

node-b\tslots=4   # inline comment
node-c slots=2# rack 1, no space before the comment
"""


def test_good_hostfile_matches_deepspeeds_parser():
    from deepspeed.launcher.runner import _parse_hostfile

    hostfile, findings = parse_hostfile(GOOD, "hosts")
    assert findings == []
    assert [(h.name, h.slots, h.line) for h in hostfile.hosts] == [
        ("node-a", 8, 2),
        ("node-b", 4, 4),
        ("node-c", 2, 5),
    ]
    assert hostfile.resource_pool() == _parse_hostfile(GOOD.splitlines(keepends=True))
    assert hostfile.resource_pool() == OrderedDict([("node-a", 8), ("node-b", 4), ("node-c", 2)])
    assert hostfile.where("node-b") == "hosts:4"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node-a slots=2\nnode-b\n", "hosts:2: no slots: write 'node-b slots=N'"),
        ("node-a slots = 2\n", "hosts:1: 'slots = 2' is not 'slots=N' with a whole number N"),
        ("node-a slots:2\n", "hosts:1: 'slots:2' is not 'slots=N'"),
        ("node-a max_slots=2\n", "hosts:1: expected 'HOSTNAME slots=N', e.g. 'node-a slots=8'"),
        ("node-a slots=8x\n", "hosts:1: 'slots=8x' is not a whole number"),
        ("node-a slots=0\n", "hosts:1: node-a has slots=0; remove the line"),
        (
            "node-a slots=99999999999999999999\n",  # DeepSpeed's range() of it overflowed
            "hosts:1: node-a has slots=99999999999999999999, more ranks than a node runs",
        ),
        (
            "node-a slots=2\n# c\nnode-a slots=4\n",
            "hosts:3: host 'node-a' is listed again (first on line 1)",
        ),
        ("node[1-2] slots=2\n", "hosts:1: host name 'node[1-2]' contains one of , @ : [ ]"),
        ("# only comments\n\n", "hosts: no hosts: write one 'HOSTNAME slots=N' line per node"),
    ],
)
def test_bad_hostfiles_name_the_line(text: str, expected: str):
    _, findings = parse_hostfile(text, "hosts")
    messages = [str(f) for f in findings if f.level == "error"]
    assert any(m.startswith(f"error: {expected}") for m in messages), messages


def test_every_bad_line_is_reported_at_once():
    _, findings = parse_hostfile("a slots=1\nb\nc slots=x\na slots=2\n", "h")
    assert [f.where for f in findings] == ["h:2", "h:3", "h:4"]


def test_ignored_trailing_keys_warn_and_localhost_in_a_cluster_warns():
    hostfile, findings = parse_hostfile("localhost slots=2 max_slots=4\nnode-b slots=2\n", "h")
    assert len(hostfile.hosts) == 2
    assert [f.level for f in findings] == ["warning", "warning"]
    assert "'max_slots=4' after slots= is ignored by DeepSpeed" in findings[0].message
    assert "'localhost' names a different machine on every node" in findings[1].message
    # every entry local (a test on one machine): no localhost warning
    _, findings = parse_hostfile("localhost slots=1\n127.0.0.2 slots=1\n", "h")
    assert findings == []


def test_unreadable_hostfile(tmp_path):
    hostfile, findings = read_hostfile(tmp_path / "missing")
    assert hostfile is None and "hostfile not found" in str(findings[0])
    (tmp_path / "bin").write_bytes(b"\xff\xfe slots=1")
    _, findings = read_hostfile(tmp_path / "bin")
    assert "cannot read the hostfile" in str(findings[0])


def test_example_hostfile_is_valid():
    from natscale.launch.envfile import source_root

    hostfile, findings = read_hostfile(f"{source_root()}/launcher/hostfile.example")
    assert findings == [] and [h.name for h in hostfile.hosts] == ["node-a", "node-b"]
