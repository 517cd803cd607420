"""Resume, start over, failed saves and aborts never lose a checkpoint (issue 12, items 2/4/5/7/13).

One real single-process training run (tiny Llama, ZeRO-3 on CPU, a checkpoint every step) makes
the checkpoints; each test damages a copy of it the way a crash, a partial copy or a full disk
does and checks what resuming from it does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from natscale.checkpoint.layout import CheckpointDir, RunDir
from natscale.checkpoint.resume import plan_resume, plan_start
from natscale.checkpoint.save import _prune
from natscale.train.metrics import read_metrics
from tests.mp.harness import assert_ok, run_distributed
from tests.train.train_fixtures import (
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)

HERE = Path(__file__).resolve().parent
STEPS = 6


def _complete(tag: str) -> bool:
    """Pruning's completeness check, for empty tag folders standing for checkpoints."""
    return True


def _config(base: Path, name: str, **sections) -> Path:
    train = {"steps": STEPS, "stop_after_steps": 4, **sections.pop("train", {})}
    return write_run_config(
        base / f"{name}.yaml",
        data_dir=base / "data",
        model_config=base / "model",
        out=base / name,
        data={"shuffle": False},
        train=train,
        checkpoint={
            "every_steps": 1,
            "keep_last": 4,
            "export_hf": False,
            **sections.pop("checkpoint", {}),
        },
        **sections,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A run stopped after step 4 of 6 with checkpoints global_step1..4 (latest: global_step4)."""
    base = tmp_path_factory.mktemp("resume")
    save_rows(pack_greedy(make_segments(60, seed=3), 64), base / "data")
    write_model_config(base / "model")
    result = run_distributed(
        ["train", str(_config(base, "run"))], launcher="single", nprocs=1, log_dir=base / "logs"
    )
    assert_ok(result)
    ckpt = base / "run" / "checkpoints"
    assert [p.name for p in sorted(ckpt.glob("global_step*"))] == [
        f"global_step{i}" for i in range(1, 5)
    ]
    return base


def _copy(base: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    return run


def _shard(run: Path, tag: str, kind: str = "optim") -> Path:
    return run / "checkpoints" / tag / f"zero_pp_rank_0_mp_rank_00_{kind}_states.pt"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_the_run_marks_its_model_config_as_its_own(base):
    """The next run (--resume) may replace it; a folder a user made there is refused instead."""
    from natscale.atomic import RUN_MODEL_CONFIG, foreign_entries, read_marker

    mc = base / "run" / "model_config"
    assert read_marker(mc) == RUN_MODEL_CONFIG and foreign_entries(mc) == []
    assert (mc / "config.json").is_file()


# ---- which checkpoint --resume picks (rank 0's plan; no process group) ------------------------
def test_latest_naming_a_missing_folder_falls_back_to_the_newest_complete(base, tmp_path):
    ckpt = _copy(base, tmp_path) / "checkpoints"
    (ckpt / "latest").write_text("global_step6")
    plan = plan_resume(ckpt)
    assert plan.tag == "global_step4" and plan.error is None
    assert plan.notes == [
        "latest names global_step6, which is missing; resuming from global_step4, the newest "
        "complete checkpoint"
    ]


def test_fallback_passes_over_incomplete_tags_and_names_them(base, tmp_path):
    run = _copy(base, tmp_path)
    shutil.rmtree(run / "checkpoints" / "global_step4")  # latest names a folder that is gone
    _truncate(_shard(run, "global_step3"))  # a save that was killed
    plan = plan_resume(run / "checkpoints")
    assert plan.tag == "global_step2"
    assert "passed over global_step3, which is incomplete: cannot read" in plan.notes[0]
    assert "truncated" in plan.notes[0]


@pytest.mark.parametrize("damage", ["truncated optim", "truncated model", "missing model"])
def test_a_damaged_latest_tag_is_refused_with_the_older_intact_tag(base, tmp_path, damage):
    run = _copy(base, tmp_path)
    how, kind = damage.split()
    shard = _shard(run, "global_step4", kind)
    _truncate(shard) if how == "truncated" else shard.unlink()
    plan = plan_resume(run / "checkpoints")
    assert plan.tag is None
    assert "global_step4, the checkpoint named by" in plan.error
    assert ("missing rank shard" if how == "missing" else "truncated") in plan.error
    assert "--resume-from global_step3" in plan.error
    assert "--tag" not in plan.error  # convert's option, not train's


def test_an_empty_latest_is_refused_with_the_newest_intact_tag(base, tmp_path):
    ckpt = _copy(base, tmp_path) / "checkpoints"
    (ckpt / "latest").write_text("")
    plan = plan_resume(ckpt)
    assert "latest is empty" in plan.error and "--resume-from global_step4" in plan.error


def test_resume_from_a_tag(base, tmp_path):
    run = _copy(base, tmp_path)
    plan = plan_resume(run / "checkpoints", requested="global_step2")
    assert plan.tag == "global_step2"
    assert "global_step3, global_step4 (newer than global_step2) are kept until" in plan.notes[1]
    _truncate(_shard(run, "global_step2", "model"))
    plan = plan_resume(run / "checkpoints", requested="global_step2")
    assert plan.error.startswith("--resume-from global_step2: the checkpoint is incomplete")
    assert "--resume-from global_step4" in plan.error


def test_nothing_complete_is_an_error_and_nothing_at_all_starts_at_step_1(base, tmp_path):
    run = _copy(base, tmp_path)
    (run / "checkpoints" / "latest").write_text("global_step9")
    for i in range(1, 5):
        _shard(run, f"global_step{i}").unlink()
    plan = plan_resume(run / "checkpoints")
    assert plan.tag is None and "no complete checkpoint to resume from" in plan.error
    assert "--fresh" in plan.error
    empty = plan_resume(tmp_path / "elsewhere" / "checkpoints")
    assert empty.error is None and empty.tag is None and "starting at step 1" in empty.notes[0]


def test_fresh_moves_the_previous_run_aside_and_deletes_nothing(base, tmp_path):
    run = _copy(base, tmp_path)
    (run / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    plan = plan_start(run, resume=False, fresh=True, requested=None)
    moved = next(run.glob("previous-*"))
    assert plan.tag is None and str(moved) in plan.notes[0]
    assert sorted(p.name for p in run.iterdir()) == sorted(["notes.txt", moved.name])
    after = sorted(str(p.relative_to(moved)) for p in moved.rglob("*"))
    assert after == sorted(b for b in before if b != "notes.txt")
    assert RunDir(run).archive_previous() is None  # nothing left to move


def test_pruning_spares_newer_tags_and_keeps_the_one_just_saved(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"global_step{step}").mkdir()
    # resumed from global_step4 with an incomplete global_step8 left by a killed save
    assert _prune(tmp_path, 1, "global_step6", _complete) == ["global_step2", "global_step4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step6", "global_step8"]
    assert _prune(tmp_path, 1, "global_step5", _complete) == []  # not saved: nothing is pruned


# ---- end to end ---------------------------------------------------------------------------
def test_resume_when_latest_names_a_missing_folder_and_metrics_end_mid_line(base, tmp_path):
    """Items 2 and 5: resume from global_step4, keep steps 1-4's records and every checkpoint."""
    run = _copy(base, tmp_path)
    ckpt = run / "checkpoints"
    (ckpt / "latest").write_text("global_step6")
    metrics = run / "metrics.jsonl"
    original = read_metrics(run)
    assert [r["step"] for r in original] == [1, 2, 3, 4]
    with metrics.open("a") as fh:  # the run that wrote global_step6 was killed mid-line
        fh.write(json.dumps({**original[-1], "step": 5}) + "\n" + '{"step": 6, "loss": 1.')
    cfg = _config(tmp_path, "run", train={"stop_after_steps": None})
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "model", tmp_path / "model")
    result = run_distributed(
        ["train", str(cfg), "--resume"], launcher="single", nprocs=1, log_dir=tmp_path / "logs"
    )
    assert_ok(result)
    log = result.rank_logs[0]
    assert (
        "latest names global_step6, which is missing; resuming from global_step4, the newest "
        "complete checkpoint" in log
    )
    assert "line 6 is cut off" in log and "removed the records of step 5" in log
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[:4] == original
    assert CheckpointDir(ckpt).read_latest() == "global_step6"
    # keep_last=4: global_step1 and 2 went only once 5 and 6 were complete
    assert sorted(p.name for p in ckpt.glob("global_step*")) == [
        f"global_step{i}" for i in range(3, 7)
    ]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == "global_step4" and summary["status"] == "completed"


def test_disk_full_during_a_save_keeps_the_last_good_checkpoint(base, tmp_path):
    """Item 7: the save of global_step3 fails (ENOSPC from torch.save): exit 1, the partial tag
    is removed, latest stays on global_step2, summary.json says why."""
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "model", tmp_path / "model")
    cfg = _config(tmp_path, "run")
    result = run_distributed(
        ["train", str(cfg)],
        launcher="single",
        nprocs=1,
        entry=str(HERE / "fault_entry.py"),
        env={"NATSCALE_TEST_ENOSPC_TAG": "global_step3"},
        log_dir=tmp_path / "logs",
    )
    assert result.returncodes == [1] and not result.timed_out, result.format_logs(60)
    log = result.rank_logs[0]
    assert "checkpoint global_step3 could not be saved: no space left on device" in log
    assert "latest names global_step2, the last good checkpoint" in log
    assert "Traceback" not in log
    ckpt = tmp_path / "run" / "checkpoints"
    assert CheckpointDir(ckpt).read_latest() == "global_step2"
    assert sorted(p.name for p in ckpt.glob("global_step*")) == ["global_step1", "global_step2"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["reason"], summary["steps"]) == (
        "aborted",
        "checkpoint_save_failed",
        3,
    )
    assert summary["checkpoint"] == str(ckpt / "global_step2")
    assert plan_resume(ckpt).tag == "global_step2"


def test_nonfinite_abort_writes_the_summary_and_names_the_last_good_checkpoint(tmp_path):
    """Item 13: steps 3 and 4 are non-finite, the limit is 1: abort at step 4 (exit 1)."""
    rows = pack_greedy(make_segments(60, seed=3), 64)
    for bad in (2, 3):  # steps 3 and 4 (one row per step, no shuffle)
        rows[bad]["segment_weight"][0] = float("nan")
    save_rows(rows, tmp_path / "data")
    write_model_config(tmp_path / "model")
    cfg = _config(tmp_path, "run", train={"max_nonfinite_steps": 1})
    result = run_distributed(
        ["train", str(cfg)], launcher="single", nprocs=1, log_dir=tmp_path / "logs"
    )
    assert result.returncodes == [1] and not result.timed_out, result.format_logs(60)
    ckpt = tmp_path / "run" / "checkpoints"
    log = result.rank_logs[0]
    assert "2 steps had a non-finite loss or gradient" in log and "stopping at step 4" in log
    assert f"Last good checkpoint: {ckpt / 'global_step3'}" in log
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["reason"], summary["steps"]) == (
        "aborted",
        "nonfinite_steps",
        4,
    )
    assert summary["checkpoint"] == str(ckpt / "global_step3")
    assert summary["nonfinite_steps"] == 2 and "Last good checkpoint" in summary["message"]


@pytest.mark.multiproc
def test_two_ranks_agree_to_stop_on_a_truncated_shard(base, tmp_path):
    """Item 4: rank 0 checks the checkpoint before any rank loads; both ranks exit 2 with the
    hint, no traceback, and nothing is trained or written."""
    run = _copy(base, tmp_path)
    _truncate(_shard(run, "global_step4", "model"))
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "model", tmp_path / "model")
    metrics = (run / "metrics.jsonl").read_bytes()
    cfg = _config(tmp_path, "run", train={"stop_after_steps": None})
    result = run_distributed(
        ["train", str(cfg), "--resume"], launcher="torchrun", log_dir=tmp_path / "logs"
    )
    assert not result.timed_out and result.returncodes != [0], result.format_logs(60)
    assert "exitcode  : 2" in result.launcher_logs[0], result.format_logs(60)
    for rank in (0, 1):
        log = result.rank_logs[rank]
        assert "natscale train: error: global_step4, the checkpoint named by" in log, log
        assert "--resume-from global_step3" in log and "Traceback" not in log
    assert (run / "metrics.jsonl").read_bytes() == metrics
    assert CheckpointDir(run / "checkpoints").read_latest() == "global_step4"


def test_a_really_full_disk_during_a_save(base, tmp_path):
    """Item 7 on a real full file system: checkpoints/ is a 600 KiB tmpfs that holds one tag
    (332 KiB) but not two, so torch.save of global_step2 fails in the kernel (ENOSPC, which
    torch reports as a RuntimeError of its zip writer). Needs root and mount; skipped otherwise."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "model", tmp_path / "model")
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(ckpt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr!r}")
    try:
        result = run_distributed(
            ["train", str(_config(tmp_path, "run"))],
            launcher="single",
            nprocs=1,
            log_dir=tmp_path / "logs",
        )
        assert result.returncodes == [1] and not result.timed_out, result.format_logs(60)
        log = result.rank_logs[0]
        assert "checkpoint global_step2 could not be saved: no space left on device" in log
        assert "latest names global_step1" in log and "Traceback" not in log
        assert CheckpointDir(ckpt).read_latest() == "global_step1"
        assert sorted(p.name for p in ckpt.glob("global_step*")) == ["global_step1"]
        assert plan_resume(ckpt).tag == "global_step1"
    finally:
        subprocess.run(["umount", str(ckpt)], check=True)


def test_resume_of_a_run_at_its_last_step_has_nothing_to_do(base, tmp_path):
    """Bug 10: no engine, no summary.json rewritten with nulls and NaN, no export."""
    run = _copy(base, tmp_path)
    summary = (run / "summary.json").read_bytes()
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "model", tmp_path / "model")
    cfg = _config(tmp_path, "run")  # stop_after_steps=4: the checkpoint is at step 4
    result = run_distributed(
        ["train", str(cfg), "--resume"], launcher="single", nprocs=1, log_dir=tmp_path / "logs"
    )
    assert_ok(result)
    log = result.rank_logs[0]
    assert "nothing to do, already at step 4/6 (train.stop_after_steps=4)" in log
    assert "Traceback" not in log
    assert (run / "summary.json").read_bytes() == summary
    assert not (run / "hf").exists()


def test_resume_of_a_finished_run_without_its_export_writes_hf_from_the_checkpoint(base, tmp_path):
    """A stop or a kill during the last step left the final checkpoint but no hf/: --resume has
    nothing to train, and writes hf/ from that checkpoint instead of leaving the run without it."""
    from natscale.atomic import HF_EXPORT, read_marker

    run = _copy(base, tmp_path)
    summary = (run / "summary.json").read_bytes()
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "model", tmp_path / "model")
    cfg = _config(  # the run's last step is 4: global_step4 is its final checkpoint
        tmp_path,
        "run",
        train={"steps": 4, "stop_after_steps": None},
        checkpoint={"export_hf": True},
    )
    result = run_distributed(
        ["train", str(cfg), "--resume"], launcher="single", nprocs=1, log_dir=tmp_path / "logs"
    )
    assert_ok(result)
    log = result.rank_logs[0]
    assert "nothing to do, already at step 4/4" in log and "hf/ is missing" in log, log
    assert f"train: wrote {run / 'hf'} from {run / 'checkpoints' / 'global_step4'}" in log
    assert "Traceback" not in log
    assert read_marker(run / "hf") == HF_EXPORT
    assert (run / "hf" / "config.json").is_file() and (run / "hf" / "model.safetensors").is_file()
    assert (run / "summary.json").read_bytes() == summary


def test_a_summary_never_holds_nan():
    from natscale.cli.train import _finite

    assert _finite({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}}) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": 2},
    }


def test_a_changed_lr_on_resume_is_applied_with_a_note(base, tmp_path):
    """Bug 7: the checkpoint's LR must not silently win over the run config's (config.yaml
    records train.lr, so that is the one used)."""
    from natscale.config.loader import load_config
    from natscale.config.run import RunConfig
    from natscale.train.engine import lr_multiplier

    run = _copy(base, tmp_path)
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "model", tmp_path / "model")
    cfg = _config(tmp_path, "run", train={"lr": 1e-4, "stop_after_steps": None})
    result = run_distributed(
        ["train", str(cfg), "--resume-from", "global_step4"],
        launcher="single",
        nprocs=1,
        log_dir=tmp_path / "logs",
    )
    assert_ok(result)
    assert (
        "the run config changes what global_step4 holds: train.lr 0.003 -> 0.0001"
        in (result.rank_logs[0])
    )
    train = load_config(cfg, RunConfig, []).train
    records = {r["step"]: r for r in read_metrics(run)}
    for step in (5, 6):
        expected = 1e-4 * lr_multiplier(step - 1, train=train, total_steps=STEPS)
        assert records[step]["lr"] == pytest.approx(expected)


def test_resume_on_other_data_is_refused_and_another_order_is_noted(base, tmp_path):
    """A checkpoint's cursor is a row position in its data and order: other data is an error
    (the rows after it would be other rows), another seed a note (a user may mean it)."""
    run = _copy(base, tmp_path)
    save_rows(pack_greedy(make_segments(80, seed=4), 64), tmp_path / "data")  # other rows
    shutil.copytree(base / "model", tmp_path / "model")
    cfg = _config(tmp_path, "run", train={"stop_after_steps": 5})
    args = ["train", str(cfg), "--resume"]
    result = run_distributed(args, launcher="single", nprocs=1, log_dir=tmp_path / "logs")
    assert result.returncodes == [2], result.rank_logs
    log = result.rank_logs[0]
    assert "is not the data checkpoint global_step4 was trained on (rows" in log
    assert "Traceback" not in log and (run / "checkpoints" / "latest").read_text() == "global_step4"
    shutil.rmtree(tmp_path / "data")
    shutil.copytree(base / "data", tmp_path / "data")
    cfg = _config(  # checkpoint.at_end false: stop_after_steps saves anyway (to resume from)
        tmp_path, "run", train={"stop_after_steps": 5, "seed": 7}, checkpoint={"at_end": False}
    )
    result = run_distributed(args, launcher="single", nprocs=1, log_dir=tmp_path / "logs2")
    assert_ok(result)
    assert "-> 7 since global_step4: the rows after row" in result.rank_logs[0]
    assert (run / "checkpoints" / "latest").read_text() == "global_step5"


def test_pruning_counts_only_complete_checkpoints(base, tmp_path):
    """A save killed midway (global_step3: its optimizer shard missing) took a keep_last place:
    the next save deleted global_step2, the checkpoint the run had resumed from, and kept the
    one nothing can load."""
    run = _copy(base, tmp_path)
    _shard(run, "global_step3").unlink()
    ckpt = run / "checkpoints"
    assert _prune(ckpt, 2, "global_step4") == ["global_step1"]
    assert sorted(p.name for p in ckpt.glob("global_step*")) == [
        "global_step2",
        "global_step3",
        "global_step4",
    ]
    assert plan_resume(ckpt).tag == "global_step4"
