"""`convert ... --overwrite` never replaces a run directory, an input or a user file (issue 12)."""

from __future__ import annotations

import json

from natscale.cli.main import main


def _fake_run(root):
    run = root / "run"
    tag = run / "checkpoints" / "global_step4"
    tag.mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("global_step4")
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    return run


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.is_file() and p.read_bytes() for p in folder.rglob("*")}


def test_zero_to_hf_into_the_run_folder_is_refused(tmp_path, capsys):
    run = _fake_run(tmp_path)
    before = _snapshot(run)
    code = main(["convert", "zero-to-hf", str(run / "checkpoints"), str(run), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2
    assert "holds an input of this command" in err and "nothing written" in err
    assert _snapshot(run) == before
    # a run folder is refused even when it is not the checkpoint's own
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "summary.json").write_text("{}")
    code = main(["convert", "zero-to-hf", str(run / "checkpoints"), str(other), "--overwrite"])
    assert code == 2 and "training run directory" in capsys.readouterr().err
    assert (other / "summary.json").read_text() == "{}"


def test_zero_to_hf_overwrite_refuses_a_folder_without_our_marker(tmp_path, capsys):
    run = _fake_run(tmp_path)
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code = main(["convert", "zero-to-hf", str(run / "checkpoints"), str(mine), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "not a Hugging Face export made by natscale" in err and "notes.txt" in err
    assert (mine / "notes.txt").read_text() == "keep"
    # a prepared-data folder is another kind: refused too
    (mine / ".natscale-output").write_text(json.dumps({"kind": "prepared", "version": 1}))
    code = main(["convert", "zero-to-hf", str(run / "checkpoints"), str(mine), "--overwrite"])
    assert code == 2 and "is a `natscale prepare` output" in capsys.readouterr().err


def test_convert_data_never_replaces_its_input(tmp_path, capsys):
    src = tmp_path / "chats.jsonl"
    record = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    src.write_text(json.dumps(record) + "\n")
    before = src.read_text()
    code = main(
        ["convert", "data", "--from", "sharegpt", "--to", "sharegpt", str(src), str(src),
         "--overwrite"]
    )  # fmt: skip
    assert code == 2 and "is an input of this conversion" in capsys.readouterr().err
    assert src.read_text() == before
