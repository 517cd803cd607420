"""CI smoke test: `natscale bench throughput` on the tiny preset writes a complete record.

Every field present and finite; no timing assertions (timings belong in benchmarks/results).
Results go to runs/bench/results under the working directory unless --results names a folder;
the tracked benchmarks/results is never written by default.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from natscale.bench.presets import REPO
from natscale.cli.main import main

TRACKED = REPO / "benchmarks" / "results"


def _finite_numbers(node, where=""):
    if isinstance(node, dict):
        for k, v in node.items():
            _finite_numbers(v, f"{where}.{k}")
    elif isinstance(node, float):
        assert math.isfinite(node), where


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


def test_tiny_throughput_record(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default results folder is relative to the cwd
    tracked_before = _listing(TRACKED)
    results = tmp_path / "runs" / "bench" / "results"
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
            "--repeats",
            "2",
        ]
    )
    assert code == 0
    assert _listing(TRACKED) == tracked_before  # nothing new or changed in the tracked tables
    out, err = capsys.readouterr()
    for n in range(1, 5):  # progress on stderr: a line before and after each of the 4 runs
        assert f"bench: run {n}/4: " in err
    assert "bench: run 4/4: baseline done in" in err
    assert "(median of 2 repeats; range " in out
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
    # the ratio over the repeats: median, min, max and each repeat's value
    spread = record["ratio_spread"]["tokens_per_s_trained"]
    assert spread["n"] == 2 and len(record["repeats"]) == 2
    each = [r["ratio"]["tokens_per_s_trained"] for r in record["repeats"]]
    assert spread["values"] == each
    assert spread["min"] == min(each) and spread["max"] == max(each)
    assert spread["median"] == record["ratio"]["tokens_per_s_trained"] == sum(each) / 2
    env = record["environment"]
    assert env["versions"]["torch"] and env["git_commit"] and len(env["load_average_1_5_15"]) == 3
    assert "MFU" in record["mfu_formula"]
    table = (results / "throughput_cpu.md").read_text()
    assert table.count("| tiny | gsm8k |") == 1
    assert f"[{spread['min']:.2f}-{spread['max']:.2f}] n=2 |" in table
    # a second benchmark in the same work folder: its runs go to a folder of their own
    again = ["bench", "throughput", "--model", "tiny", "--data", "gsm8k", "--seq-len", "256",
             "--warmup", "1", "--steps", "1", "--device", "cpu", "--no-ac", "--no-baseline",
             "--work-dir", str(tmp_path / "work"), "--repeats", "1"]  # fmt: skip
    assert main(again) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "work" / "throughput" / "runs").iterdir())) == 2


def test_bad_override_is_a_clear_error(capsys):
    assert main(["bench", "throughput", "--device", "cpu", "--set", "train.lr"]) == 2
    err = capsys.readouterr().err
    assert "--set 'train.lr': expected KEY=VALUE" in err


def test_example_preset_prepares_from_any_directory(tmp_path: Path, monkeypatch):
    """The bundled example's prepare config names checkout-relative paths; bench resolves them."""
    from natscale.bench.datasets import build_datasets

    monkeypatch.chdir(tmp_path)
    packed, baseline = build_datasets(
        "example", seq_len=4096, vocab=512, min_rows=16, seed=0, cache_dir=tmp_path / "data"
    )
    assert (packed / "stats.json").is_file() and (baseline / "stats.json").is_file()
