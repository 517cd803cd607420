"""CI smoke test: `natscale bench throughput` on the tiny preset writes a complete record.

Every field present and finite; no timing assertions (timings belong in benchmarks/results).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from natscale.cli.main import main


def _finite_numbers(node, where=""):
    if isinstance(node, dict):
        for k, v in node.items():
            _finite_numbers(v, f"{where}.{k}")
    elif isinstance(node, float):
        assert math.isfinite(node), where


def test_tiny_throughput_record(tmp_path: Path):
    results = tmp_path / "results"
    code = main(
        [
            "bench",
            "throughput",
            "--model",
            "tiny",
            "--data",
            "gsm8k",
            "--seq-len",
            "256",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--no-ac",
            "--set",
            "train.lr=2.5e-5",
            "--work-dir",
            str(tmp_path / "work"),
            "--results",
            str(results),
        ]
    )
    assert code == 0
    (path,) = results.glob("throughput_tiny_gsm8k_cpu_*.json")
    record = json.loads(path.read_text())
    for side in ("natscale", "baseline"):
        s = record[side]
        assert s["measured_steps"] == 2
        assert set(s["step_time_s"]) == {"median", "p10", "p90"}
        assert set(s["tokens_per_s_per_gpu"]) == {"slot", "nonpad", "trained"}
        assert s["tokens_per_s_per_gpu"]["trained"] > 0
        assert s["peak_memory_gib"]["max_rss_gib"] > 0
        assert 0 <= s["data_wait_share"] < 1 and 0 < s["packing_efficiency"] <= 1
        assert s["mfu"] is None  # no peak FLOP/s for a CPU
        assert s["tflops_per_gpu"] > 0 and math.isfinite(s["final_loss"])
        _finite_numbers({k: v for k, v in s.items() if k != "config"})
    assert record["natscale"]["loss"] == "fused" and record["baseline"]["loss"] == "logits"
    assert record["baseline"]["attn_implementation"] == "sdpa"
    # which segment-loss implementation ran, and why (never a silent fallback)
    ran = record["natscale"]["loss_implementation"]
    assert ran["head"] == "fused" and ran["cpu"]["impl"] in ("cpu", "reference"), ran
    assert ran["cpu"]["why"], ran
    assert record["baseline"]["loss_implementation"]["head"] == "logits"
    assert record["baseline"]["config"]["model"]["loss"] == "logits"
    # --set reaches both sides' run config and is recorded with the spec
    assert (
        record["natscale"]["config"]["train"]["lr"] == record["baseline"]["config"]["train"]["lr"]
    )
    assert record["natscale"]["config"]["train"]["lr"] == 2.5e-5
    assert record["spec"]["extra"] == {"train.lr": 2.5e-5}
    assert all(math.isfinite(v) and v > 0 for v in record["ratio"].values())
    env = record["environment"]
    assert env["versions"]["torch"] and env["git_commit"] and len(env["load_average_1_5_15"]) == 3
    assert "MFU" in record["mfu_formula"]
    table = (results / "throughput_cpu.md").read_text()
    assert table.count("| tiny | gsm8k |") == 1


def test_bad_override_is_a_clear_error(capsys):
    assert main(["bench", "throughput", "--device", "cpu", "--set", "train.lr"]) == 1
    err = capsys.readouterr().err
    assert "--set 'train.lr': expected KEY=VALUE" in err
