"""`natscale selftest` on 2 CPU ranks under every launch mode, and the harness failing loudly.

Each launch takes ~10-25 s on 2 busy cores with DeepSpeed's shm op cached (the harness builds it
once into TORCH_EXTENSIONS_DIR before the first launch, ~35-50 s cold).
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import psutil
import pytest

from tests.mp.harness import LAUNCHERS, assert_ok, run_distributed

pytestmark = pytest.mark.multiproc
FAULTY = str(Path(__file__).with_name("faulty_rank.py"))
_LOSSES_BY_LAUNCHER: dict[str, list[float]] = {}


def _launchers(fast: tuple[str, ...]) -> list:
    """Every launcher; those not in ``fast`` only with NATSCALE_SLOW=1 (the suite's time on 2
    cores: mpirun and no-ssh also train in tests/launch/test_launch_mp.py)."""
    return [
        pytest.param(name, marks=() if name in fast else pytest.mark.slow) for name in LAUNCHERS
    ]


@pytest.mark.parametrize("launcher", _launchers(fast=("torchrun", "deepspeed")))
def test_selftest_zero3_two_ranks(launcher, tmp_path):
    result = run_distributed(["selftest", "--steps", "4"], launcher=launcher, log_dir=tmp_path)
    assert_ok(result)
    reports = [result.last(rank, "selftest") for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["world_size"] == 2 and r["backend"] == "gloo" and r["zero_stage"] == 3
        assert r["master_addr"] == "127.0.0.1"
        # one machine: local rank = rank; two no-ssh "nodes" of one slot: local rank 0 on each
        assert r["local_rank"] == (0 if launcher == "nossh" else r["rank"])
        assert len(r["losses"]) == 4 and r["losses"][-1] < r["losses"][0]
        # each rank holds its half of every parameter, not the model
        assert r["params_local"] == r["params_share"] == r["params_total"] // 2
    assert re.search(
        r"^selftest: loss .* world size 2 .* partitioned: yes .*: OK$", result.rank_logs[0], re.M
    )
    assert "selftest: loss" not in result.rank_logs[1]  # the summary is rank 0's
    # natscale unlinks DeepSpeed's shm segments itself (the harness would otherwise remove them)
    assert result.shm_leftovers == []
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{result.port}_*")
    # same seeds, same math: every launch mode trains to the same losses
    losses = reports[0]["losses"] + reports[1]["losses"]
    for other, seen in _LOSSES_BY_LAUNCHER.items():
        assert losses == pytest.approx(seen, rel=1e-4), f"{launcher} vs {other}"
    _LOSSES_BY_LAUNCHER[launcher] = losses


@pytest.mark.parametrize("launcher", _launchers(fast=("deepspeed",)))
def test_crashing_rank_fails_loudly_with_every_rank_log(launcher, tmp_path):
    result = run_distributed(
        ["--mode", "crash"], launcher=launcher, entry=FAULTY, log_dir=tmp_path, timeout=120
    )
    assert not result.ok and not result.timed_out
    with pytest.raises(AssertionError) as failure:
        assert_ok(result)
    message = str(failure.value)
    assert "RuntimeError: faulty_rank: rank 1 crashes on purpose" in message
    for rank in (0, 1):
        assert f"===== rank {rank} =====" in message
        assert f"faulty_rank: rank {rank} of 2 initialised" in result.rank_logs[rank]


def test_hung_rank_dumps_its_stack_before_the_timeout(tmp_path):
    # NATSCALE_HANG_DUMP_S: every rank dumps its stacks and exits 10 s after init
    result = run_distributed(
        ["--mode", "hang"],
        launcher="deepspeed",
        entry=FAULTY,
        log_dir=tmp_path,
        timeout=120,
        hang_dump_s=10,
    )
    assert not result.ok and not result.timed_out
    assert result.elapsed_s < 120
    with pytest.raises(AssertionError) as failure:
        assert_ok(result)
    message = str(failure.value)
    # the first rank whose guard fires exits; the launcher's SIGTERM makes the other dump too
    assert any("Timeout (0:00:10)!" in text for text in result.rank_logs.values())
    assert re.search(r'faulty_rank\.py", line \d+ in hang_forever', result.rank_logs[1])
    # rank 0 waits in the barrier: its dump (or gloo's error once rank 1 is gone) is in the
    # call on faulty_rank.py's barrier line; when rank 1's guard fires first, rank 0's own dump
    # may catch torch's c10d wrapper logging that error, past the barrier frame itself
    lines = Path(FAULTY).read_text().splitlines()
    barrier = next(n for n, line in enumerate(lines, 1) if "dist.barrier()" in line)
    in_barrier = rf'faulty_rank\.py", line {barrier},? in main'
    assert re.search(in_barrier, result.rank_logs[0]), result.rank_logs[0]
    assert "in hang_forever" in message and re.search(in_barrier, message)


@pytest.mark.slow  # the harness's own safety net (30 s of waiting), not natscale's behaviour
def test_timeout_dumps_stacks_and_kills_the_whole_tree(tmp_path):
    # no in-rank guard: the harness's own timeout must dump (SIGUSR1) and kill every process
    result = run_distributed(
        ["--mode", "hang"],
        launcher="torchrun",
        entry=FAULTY,
        log_dir=tmp_path,
        timeout=30,
        hang_dump_s=0,
    )
    assert result.timed_out and not result.ok
    assert 30 <= result.elapsed_s < 60
    assert re.search(r"in hang_forever", result.rank_logs[1])
    assert re.search(r"in barrier", result.rank_logs[0])
    pids = [
        int(m)
        for text in result.rank_logs.values()
        for m in re.findall(r"initialised, pid (\d+)", text)
    ]
    assert len(pids) == 2
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_selftest_console_script_alone_with_a_config_dir_and_bf16(tmp_path):
    from natscale.train.selftest import TINY_LLAMA

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({**TINY_LLAMA, "num_hidden_layers": 1}))
    args = ["selftest", "--steps", "3", "--bf16", "--model-config", str(model_dir)]
    result = run_distributed(args, launcher="single", nprocs=1, log_dir=tmp_path)
    assert_ok(result)
    report = result.last(0, "selftest")
    assert report["world_size"] == 1 and report["dtype"] == "bf16"
    assert report["params_local"] == report["params_total"] < 147_776  # one layer, all on one rank
    assert result.rank_logs[0].strip().splitlines()[-1].endswith(": OK")
