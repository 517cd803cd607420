"""natscale.env.machine: the one description of where a measurement ran (bench records and the
scripts under benchmarks/ all use it)."""

from __future__ import annotations

import torch

from natscale.bench.record import device_tag, environment
from natscale.env import machine


def test_machine_names_host_cpu_device_versions_and_commit():
    m = machine(("numpy",))
    assert m["host"] and m["cpu"] and m["cpu_count"] >= 1 and m["python"].count(".") == 2
    assert m["mem_gib"] is None or m["mem_gib"] > 0
    assert len(m["load_average_1_5_15"]) == 3
    assert list(m["versions"]) == ["torch", "deepspeed", "transformers", "natscale", "numpy"]
    assert m["versions"]["torch"] and m["versions"]["natscale"]
    if torch.cuda.is_available():
        assert m["device"] == torch.cuda.get_device_name(0)
    else:
        assert m["device"] == f"cpu: {m['cpu']}" and m["cuda"] is None
    assert len(m["git_commit"]) == 40  # the tests run from a checkout


def test_bench_records_use_it():
    env = environment()
    assert set(machine()) == set(env)
    assert "flash-attn" in env["versions"]
    if not torch.cuda.is_available():
        assert device_tag(env) == "cpu"
