"""Resuming a ZeRO-3 checkpoint on another number of ranks (DeepSpeed's universal checkpoint).

One 2-rank run of 8 steps saves at step 4 and serves as the reference. A copy of it whose
``latest`` names step 4 is resumed on 1 rank: first with ``train.steps=4`` (nothing to train, so the
exported HF weights are the weights right after the load), then to step 8 with ``grad_accum=2`` (the
same global batch), which must continue at step 5 from the same row and follow the reference run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from natscale.checkpoint.universal import (
    UniversalConversionError,
    convert_to_universal,
    saved_world_size,
)
from natscale.train.metrics import read_metrics
from tests.mp.harness import assert_ok, run_distributed
from tests.train.train_fixtures import (
    make_segments,
    pack_greedy,
    save_rows,
    write_model_config,
    write_run_config,
)

STEPS = 8


@pytest.mark.multiproc
def test_resume_two_rank_checkpoint_on_one_rank(tmp_path: Path, capsys):

    save_rows(pack_greedy(make_segments(120, seed=5), 64), tmp_path / "data")
    write_model_config(tmp_path / "model")
    logs = tmp_path / "logs"

    def config(name: str, **train) -> Path:
        return write_run_config(
            tmp_path / f"{name}.yaml",
            data_dir=tmp_path / "data",
            model_config=tmp_path / "model",
            out=tmp_path / "run" if name != "ref" else tmp_path / "ref",
            train={"steps": STEPS, **train},
            checkpoint={"every_steps": 4, "keep_last": 2, "export_hf": True},
        )

    result = run_distributed(["train", str(config("ref"))], launcher="torchrun", log_dir=logs)
    assert_ok(result)
    reference = read_metrics(tmp_path / "ref")
    _convert_command(tmp_path / "ref" / "checkpoints", capsys)
    # the run as it was at step 4: its checkpoint is the latest, its metrics end at step 4
    shutil.copytree(tmp_path / "ref", tmp_path / "run", ignore=shutil.ignore_patterns("hf"))
    ckpt = tmp_path / "run" / "checkpoints"
    shutil.rmtree(ckpt / "global_step8")
    (ckpt / "latest").write_text("global_step4")
    assert saved_world_size(ckpt / "global_step4") == 2

    # (a) a resume already at its last step trains nothing and converts nothing to universal;
    # its missing hf/ export is written from the checkpoint (docs/training.md)
    args = ["train", str(config("load", steps=4)), "--resume"]
    result = run_distributed(args, launcher="single", nprocs=1, log_dir=logs)
    assert_ok(result)
    assert "nothing to do, already at step 4/4" in result.rank_logs[0]
    assert "hf/ is missing" in result.rank_logs[0]
    assert not (ckpt / "global_step4_universal").exists() and (tmp_path / "run" / "hf").is_dir()
    shutil.rmtree(tmp_path / "run" / "hf")

    # (b) training goes on from step 5 and the same row, as the 2-rank run did
    args = ["train", str(config("resume", grad_accum=2)), "--resume"]
    result = run_distributed(args, launcher="single", nprocs=1, log_dir=logs)
    assert_ok(result)
    assert (
        "checkpoint global_step4 was written by 2 ranks, resuming on 1: converted to a universal "
        f"checkpoint at {ckpt / 'global_step4_universal'}"
    ) in result.rank_logs[0]
    assert not list(ckpt.glob(".*partial-*")) and not (ckpt / "latest_universal").exists()
    resumed = read_metrics(tmp_path / "run")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(reference[4:], resumed[4:], strict=True):
        assert a["epoch"] == b["epoch"] and a["tokens_seen"] == b["tokens_seen"], a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6)
        # 1 rank x accumulation 2 computes the 2-rank step's gradient up to summation order; Adam
        # amplifies that noise a little each step
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3), a["step"]
    # step 5 runs on the loaded weights (the saved ones: the same rows give the same loss, to the
    # last bit). Step 6 shows the Adam moments came
    # back: measured 4e-6 apart with them, 4e-3 apart when only the weights are loaded
    assert resumed[4]["loss"] == reference[4]["loss"]
    assert resumed[5]["loss"] == pytest.approx(reference[5]["loss"], rel=1e-4)
    losses = [r["loss"] for r in resumed]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from"] == "global_step4" and summary["world_size"] == 1
    assert (ckpt / "latest").read_text() == "global_step8"
    assert saved_world_size(ckpt / "global_step8") == 1  # the new checkpoint is a 1-rank one
    # Adam counted each of steps 5-8 once per parameter group when the groups shared the loaded
    # step tensor (11 at step 8, and its bias correction with it)
    assert _adam_steps(tmp_path / "ref" / "checkpoints" / "global_step8") == {8.0}
    assert _adam_steps(ckpt / "global_step8") == {8.0}
    assert sorted(p.name for p in ckpt.glob("global_step*")) == [
        "global_step4",
        "global_step4_universal",
        "global_step8",
    ]


def _adam_steps(tag_dir: Path) -> set[float]:
    """Every ``step`` of the optimizer states saved in ``tag_dir`` (all ranks' files)."""
    found: set[float] = set()

    def walk(obj) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == "step" and (torch.is_tensor(value) or isinstance(value, (int, float))):
                    found.add(float(value))
                else:
                    walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)

    from natscale.checkpoint.safety import load_weights_only

    files = sorted(tag_dir.glob("*optim_states.pt"))
    assert files, tag_dir
    for path in files:
        walk(load_weights_only(path, map_location="cpu").get("optimizer_state_dict"))
    return found


def test_shared_step_tensors_are_given_one_each():
    """DeepSpeed's universal load gives every parameter group's state one `step` tensor; torch's
    Adam then adds 1 to it once per group."""
    from natscale.checkpoint.save import _own_step_tensors

    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.AdamW([{"params": [a]}, {"params": [b]}])
    (a.sum() + b.sum()).backward()
    adam.step()
    step = torch.tensor(4.0)
    adam.state[a]["step"] = adam.state[b]["step"] = step  # as the universal load leaves them
    engine = type("Engine", (), {"optimizer": type("Zero", (), {"optimizer": adam})()})()
    assert _own_step_tensors(engine) == 1
    adam.step()
    assert float(adam.state[a]["step"]) == float(adam.state[b]["step"]) == 5.0
    assert _own_step_tensors(engine) == 0


def test_pruning_a_tag_removes_its_universal_copy(tmp_path: Path):
    from natscale.checkpoint.save import _prune

    for name in ("global_step4", "global_step4_universal", "global_step8", "global_step12"):
        (tmp_path / name).mkdir()
    assert _prune(tmp_path, 2, "global_step12", lambda tag: True) == ["global_step4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step12", "global_step8"]


def _convert_command(ckpt: Path, capsys) -> None:
    """`natscale convert zero-to-universal` on a real 2-rank checkpoint (latest and --tag)."""
    from natscale.cli.main import main

    assert main(["convert", "zero-to-universal", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"zero-to-universal: {ckpt / 'global_step8_universal'} (written in" in out
    assert "from tag global_step8 (2 rank(s))" in out
    assert main(["convert", "zero-to-universal", str(ckpt), "--tag", "global_step4"]) == 0
    assert "once global_step4 is named in 'latest'" in capsys.readouterr().out
    universal = ckpt / "global_step8_universal"
    assert (universal / "zero" / "optimizer_state.pt").is_file()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        for state in ("fp32", "exp_avg", "exp_avg_sq"):
            assert (universal / "zero" / name / f"{state}.pt").is_file(), (name, state)
    assert main(["convert", "zero-to-universal", str(ckpt)]) == 0
    assert "(already there, kept)" in capsys.readouterr().out
    assert main(["convert", "zero-to-universal", str(ckpt), "--tag", "global_step5"]) == 2
    assert "unknown tag 'global_step5'" in capsys.readouterr().err
    shutil.rmtree(universal)  # the copy below must convert step 4 itself
    shutil.rmtree(ckpt / "global_step4_universal")


def test_unconvertible_checkpoint_is_a_clear_error(tmp_path: Path):
    """Shards that are not ZeRO optimizer states: DeepSpeed's converter fails; we say where and
    what to do, and leave nothing behind."""
    ckpt = tmp_path / "checkpoints"
    tag = ckpt / "global_step3"
    tag.mkdir(parents=True)
    for rank in range(2):
        torch.save(
            {"not": "a zero checkpoint"}, tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        )
        torch.save({}, tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    assert saved_world_size(tag) == 2
    with pytest.raises(UniversalConversionError) as info:
        convert_to_universal(ckpt, "global_step3")
    message = str(info.value)
    assert str(tag) in message and "ds_to_universal" in message
    assert f"natscale convert zero-to-hf {ckpt} OUT_DIR --tag global_step3" in message
    assert sorted(p.name for p in ckpt.iterdir()) == ["global_step3"]


def test_world_size_of_non_zero_checkpoint_is_unknown(tmp_path: Path):
    (tmp_path / "mp_rank_00_model_states.pt").write_bytes(b"")
    assert saved_world_size(tmp_path) is None


def test_world_size_recorded_by_the_trainer_beats_the_shards_this_node_sees(tmp_path: Path):
    from natscale.checkpoint.layout import WORLD_FILE

    tag = tmp_path / "global_step4"
    tag.mkdir()
    for rank in (0, 1):  # node-local disk: node 0's two ranks of a 4-rank job
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert saved_world_size(tag) == 2  # no record (DeepSpeed's own folders): the shards decide
    (tag / WORLD_FILE).write_text("4\n")
    assert saved_world_size(tag) == 4
