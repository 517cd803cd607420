"""How often ZeRO-3 gathers the lm_head around the fused loss (one rank, gloo, tiny Llama).

The fused op forms dW in its forward, so its backward never reads the weight; yet DeepSpeed
gathers the head again before that backward. Measured here (tests/model/zero3_head_probe.py): one
gather in forward and one in backward per micro-batch. Dropping the backward one is not possible
from natscale's side: torch's AccumulateGrad lays the [V, H] gradient out like the parameter it
accumulates into, which ZeRO-3 has partitioned to a [0] placeholder without that gather, and the
backward fails ("The size of tensor a (0) must match the size of tensor b (H)"). If a DeepSpeed
release changes either fact, these tests say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("zero3_head_probe.py")


def _probe(*args: str) -> tuple[int, dict]:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(PROBE), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=root,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the probe (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(lines[-1])


@pytest.mark.slow
@pytest.mark.multiproc
def test_head_is_gathered_once_per_pass():
    code, out = _probe("fused")
    assert code == 0, out
    assert out["forward"] == 1 and out["backward"] == 1, out
    assert out["loss_finite"] and out["head_grad_norm"] > 0


@pytest.mark.slow
@pytest.mark.multiproc
def test_backward_gather_is_what_lets_the_gradient_accumulate():
    code, out = _probe("fused", "--skip-backward-gather")
    assert code == 1 and out["backward"] == 0, out
    assert "size of tensor a (0) must match" in out["backward_error"], out
