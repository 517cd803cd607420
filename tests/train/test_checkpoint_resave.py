"""Saving a step again (a run resumed from an earlier tag): never a mix of two runs' files.

``checkpoint.save`` runs here in this process on a one-rank gloo group with a stand-in engine
that writes the two shard files the way DeepSpeed's ``save_checkpoint`` does (model states
first), so a crash between them, a full disk and the universal copy can be checked in a second.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from natscale.checkpoint.layout import CheckpointDir
from natscale.checkpoint.save import CheckpointSaveError, save
from natscale.checkpoint.universal import SOURCE_FILE, source_fingerprint, universal_is_current

MODEL = "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


class Killed(BaseException):
    """Stands in for a SIGKILL (OOM, lost node): nothing after it runs."""


class _CkptEngine:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def save(self, obj: Any, path: str) -> None:
        if self.fail:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        torch.save(obj, path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)


class FakeEngine:
    """Writes MODEL then OPTIM of a tag, each holding ``run``; ``kill_after_model`` dies between."""

    def __init__(self, run: str, *, kill_after_model: bool = False, fail: bool = False) -> None:
        self.run = run
        self.kill_after_model = kill_after_model
        self.checkpoint_engine = _CkptEngine(fail)

    def _copy_recovery_script(self, path: str) -> None:
        pass

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool):
        folder = os.path.join(save_dir, tag)
        self.checkpoint_engine.makedirs(folder, exist_ok=True)
        self.checkpoint_engine.save({"run": self.run}, os.path.join(folder, MODEL))
        if self.kill_after_model:
            raise Killed
        self.checkpoint_engine.save({"run": self.run}, os.path.join(folder, OPTIM))
        self._copy_recovery_script(save_dir)


@pytest.fixture(scope="module")
def group():
    """A one-rank gloo process group in this process, gone afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _tag(ckpt: Path, step: int, run: str) -> Path:
    folder = ckpt / f"global_step{step}"
    folder.mkdir(parents=True)
    for name in (MODEL, OPTIM):
        torch.save({"run": run}, folder / name)
    (folder / "natscale_world_size").write_text("1\n")
    return folder


def _branch_a(tmp_path: Path) -> Path:
    """Run A saved global_step2 and global_step4 (latest); a universal copy of step 4 exists."""
    ckpt = tmp_path / "checkpoints"
    _tag(ckpt, 2, "A")
    _tag(ckpt, 4, "A")
    (ckpt / "latest").write_text("global_step4")
    universal = ckpt / "global_step4_universal"
    universal.mkdir()
    (universal / SOURCE_FILE).write_text(json.dumps(source_fingerprint(ckpt / "global_step4")))
    return ckpt


def _run_of(path: Path) -> str:
    return torch.load(path, weights_only=True)["run"]


def test_resaving_the_tag_latest_names_moves_latest_off_it_first(group, tmp_path):
    """Bug 2: run B, resumed from global_step2, is killed while writing global_step4."""
    ckpt = _branch_a(tmp_path)
    with pytest.raises(Killed):
        save(FakeEngine("B", kill_after_model=True), ckpt, step=4, client_state={},
             keep_last=4, fallback="global_step2")  # fmt: skip
    assert CheckpointDir(ckpt).read_latest() == "global_step2"
    step4 = ckpt / "global_step4"
    assert _run_of(step4 / MODEL) == "B" and not (step4 / OPTIM).exists()  # no A file left
    assert not (ckpt / "global_step4_universal").exists()


def test_a_completed_resave_replaces_the_tag_and_its_universal_copy(group, tmp_path):
    """Bug 1: the universal copy of run A's global_step4 goes when run B saves that step."""
    ckpt = _branch_a(tmp_path)
    assert universal_is_current(ckpt, "global_step4")
    tag = save(FakeEngine("B"), ckpt, step=4, client_state={}, keep_last=4, fallback="global_step2")
    assert tag == "global_step4" and CheckpointDir(ckpt).read_latest() == "global_step4"
    assert {_run_of(ckpt / tag / n) for n in (MODEL, OPTIM)} == {"B"}
    assert not (ckpt / "global_step4_universal").exists()
    assert sorted(p.name for p in ckpt.glob("global_step*")) == ["global_step2", "global_step4"]


def test_a_failed_resave_says_which_tag_latest_names(group, tmp_path):
    ckpt = _branch_a(tmp_path)
    with pytest.raises(CheckpointSaveError) as info:
        save(FakeEngine("B", fail=True), ckpt, step=4, client_state={}, keep_last=4,
             fallback="global_step2")  # fmt: skip
    message = str(info.value)
    assert "no space left on device" in message
    assert f"The partial {ckpt / 'global_step4'} was removed" in message
    assert "latest names global_step2, the last good checkpoint" in message
    assert CheckpointDir(ckpt).read_latest() == "global_step2"
    assert sorted(p.name for p in ckpt.iterdir()) == ["global_step2", "latest"]


def test_a_universal_copy_older_than_its_tag_is_not_current(tmp_path):
    ckpt = _branch_a(tmp_path)
    assert universal_is_current(ckpt, "global_step4")
    torch.save({"run": "B"}, ckpt / "global_step4" / MODEL)  # the tag was saved again
    assert not universal_is_current(ckpt, "global_step4")
    (ckpt / "global_step4_universal" / SOURCE_FILE).unlink()  # made before the record existed
    assert not universal_is_current(ckpt, "global_step4")
