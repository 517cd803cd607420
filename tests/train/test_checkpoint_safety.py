"""`natscale train --resume` loads checkpoints weights-only: a crafted file is refused (exit 2) and
nothing of it runs; natscale's own checkpoints (DeepSpeed state, client state, RNG states) load.

One 1-rank run saves global_step2; each test resumes a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from natscale.checkpoint.safety import load_weights_only
from tests.mp.harness import assert_ok, run_distributed
from tests.train.train_fixtures import make_segments, pack_greedy, save_rows, write_model_config
from tests.train.train_fixtures import write_run_config as _write_run_config

pytestmark = pytest.mark.multiproc
MODEL = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _config(base: Path, name: str, steps: int) -> Path:
    return _write_run_config(
        base / f"{name}.yaml",
        data_dir=base / "data",
        model_config=base / "model",
        out=base / name,
        train={"steps": steps},
        checkpoint={"every_steps": 2, "keep_last": 2, "export_hf": False},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("safe_resume")
    save_rows(pack_greedy(make_segments(40, seed=5), 64), base / "data")
    write_model_config(base / "model")
    result = run_distributed(
        ["train", str(_config(base, "ref", 2))], launcher="single", nprocs=1, log_dir=base / "logs"
    )
    assert_ok(result)
    return base


def _resume(base: Path, name: str, *, craft: str | None = None, recorded_world: int | None = None):
    """Resume a copy of the reference run to step 3; return (result, marker, checkpoint dir)."""
    shutil.copytree(base / "ref", base / name)
    tag_dir = base / name / "checkpoints" / "global_step2"
    marker = base / f"{name}.marker"
    if craft is not None:
        state = load_weights_only(tag_dir / craft, map_location="cpu")
        target = state.get("optimizer_state_dict", state)
        target["natscale_test_payload"] = _SystemCall(marker)
        torch.save(state, tag_dir / craft)
    if recorded_world is not None:  # as if more ranks had written it: resume converts it first
        (tag_dir / "natscale_world_size").write_text(f"{recorded_world}\n")
    args = ["train", str(_config(base, name, 3)), "--resume"]
    result = run_distributed(args, launcher="single", nprocs=1, log_dir=base / "logs")
    return result, marker, tag_dir.parent


@pytest.mark.parametrize("craft", [MODEL, OPTIM], ids=["model_states", "optim_states"])
def test_resume_refuses_a_crafted_file(trained: Path, craft: str):
    result, marker, _ = _resume(trained, f"crafted_{craft[:-3]}", craft=craft)
    log = result.rank_logs[0]
    assert result.returncodes == [2], result.format_logs()
    assert not marker.exists()
    assert f"{craft}: refused to load" in log and "posix.system" in log, log
    assert "only loads checkpoints weights-only" in log


def test_resume_on_another_world_size_refuses_a_crafted_file(trained: Path):
    result, marker, ckpt = _resume(trained, "crafted_universal", craft=OPTIM, recorded_world=2)
    assert result.returncodes == [2], result.format_logs()
    assert not marker.exists()
    assert f"{OPTIM}: refused to load" in result.rank_logs[0]
    assert not (ckpt / "global_step2_universal").exists()


def test_resume_of_a_legitimate_checkpoint(trained: Path):
    result, _, _ = _resume(trained, "legit")
    assert_ok(result)
    summary = json.loads((trained / "legit" / "summary.json").read_text())
    assert summary["resumed_from"] == "global_step2" and summary["steps"] == 3
