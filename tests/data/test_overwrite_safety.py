"""`--overwrite` replaces only a folder natscale made for that purpose (issue 12, item 1)."""

import json

import pytest
import yaml

from natscale.atomic import MARKER, atomic_output_dir, read_marker
from natscale.cli.main import main
from natscale.data.prepare import prepare

from .test_prepare import _config


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def _write_cli_config(tokenizer_dir, nat_files, path):
    traj, questions, prompt = nat_files
    cfg = {
        "sources": [
            {"format": "nat", "paths": [traj.name], "questions": [questions.name],
             "prompt": prompt.name}
        ],
        "render": {"tokenizer": str(tokenizer_dir), "template": "llama2"},
        "pack": {"max_seq_len": 256},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_prepare_out_dot_overwrite_refuses_and_deletes_nothing(
    tokenizer_dir, nat_files, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # the inputs and the config sit in the working directory
    _write_cli_config(tokenizer_dir, nat_files, tmp_path / "prep.yaml")
    before = _snapshot(tmp_path)
    code = main(["prepare", "prep.yaml", "--out", ".", "--overwrite", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "current working directory" in err and "never replaces it" in err
    assert _snapshot(tmp_path) == before
    # the parent of the working directory is refused the same way
    assert main(["prepare", "prep.yaml", "--out", "..", "--overwrite", "--no-progress"]) == 2
    assert "current working directory" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_prepare_refuses_a_folder_holding_its_inputs(tokenizer_dir, nat_files, tmp_path):
    cfg = _config(tokenizer_dir, nat_files, overwrite=True)
    sub = tmp_path / "work"
    sub.mkdir()
    (sub / "x").write_text("x")
    with pytest.raises(FileExistsError, match=r"holds an input of this command \(.*trajectories"):
        prepare(cfg, tmp_path, progress=False)  # tmp_path holds the data files
    config_file = sub / "prep.yaml"
    config_file.write_text("{}")
    with pytest.raises(FileExistsError, match=r"prep\.yaml"):  # the CLI passes its config file
        prepare(cfg, sub, progress=False, inputs=[config_file])
    assert (sub / "x").read_text() == "x" and config_file.read_text() == "{}"


def test_prepare_overwrite_refuses_user_folders_and_run_dirs(tokenizer_dir, nat_files, tmp_path):
    cfg = _config(tokenizer_dir, nat_files, overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=rf"not a `natscale prepare` output.*no {MARKER}"):
        prepare(cfg, mine, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    # a marker of another kind is not enough
    (mine / MARKER).write_text(json.dumps({"kind": "hf-export", "version": 1}))
    with pytest.raises(FileExistsError, match="is a Hugging Face export made by natscale"):
        prepare(cfg, mine, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"
    # a run directory is never replaced, even one carrying our marker
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / MARKER).write_text(json.dumps({"kind": "prepared", "version": 1}))
    with pytest.raises(FileExistsError, match="training run directory"):
        prepare(cfg, run, progress=False)
    assert (run / "metrics.jsonl").read_text() == "{}\n"


def test_overwrite_of_an_earlier_prepare_output_still_works(tokenizer_dir, nat_files, tmp_path):
    cfg = _config(tokenizer_dir, nat_files)
    out = tmp_path / "out"
    prepare(cfg, out, progress=False)
    assert read_marker(out) == "prepared"
    # a file the earlier run wrote (listed in its marker) goes with the folder
    (out / "stale.txt").write_text("from an older run")
    marker = json.loads((out / MARKER).read_text())
    assert "stats.json" in marker["entries"] and MARKER not in marker["entries"]
    marker["entries"].append("stale.txt")
    (out / MARKER).write_text(json.dumps(marker))
    res = prepare(cfg.model_copy(update={"overwrite": True}, deep=True), out, progress=False)
    assert res.out_dir == out.resolve() and not (out / "stale.txt").exists()
    assert read_marker(out) == "prepared" and (out / "stats.json").is_file()
    assert not list(tmp_path.glob(".out.*"))
    # an empty folder may be filled (and gets the marker)
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare(cfg, empty, progress=False)
    assert read_marker(empty) == "prepared"


def test_atomic_output_dir_keeps_rename_semantics(tmp_path):
    out = tmp_path / "o"
    with atomic_output_dir(out, kind="prepared") as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()
    assert (out / "a").read_text() == "1" and read_marker(out) == "prepared"
    with (
        pytest.raises(RuntimeError),
        atomic_output_dir(out, kind="prepared", overwrite=True) as tmp,
    ):
        (tmp / "a").write_text("2")
        raise RuntimeError("boom")
    assert (out / "a").read_text() == "1"  # the old output is untouched on failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_an_unmarked_prepare_output_from_before_the_marker_is_replaced(
    tokenizer_dir, nat_files, tmp_path
):
    cfg = _config(tokenizer_dir, nat_files)
    out = tmp_path / "out"
    prepare(cfg, out, progress=False)
    (out / MARKER).unlink()  # as an older natscale wrote it
    again = cfg.model_copy(update={"overwrite": True}, deep=True)
    prepare(again, out, progress=False)
    assert read_marker(out) == "prepared"
    (out / MARKER).unlink()
    (out / "my_notes.txt").write_text("mine")  # anything beyond that layout: refused
    with pytest.raises(FileExistsError, match=r"no \.natscale-output marker.*my_notes\.txt"):
        prepare(again, out, progress=False)
    assert (out / "my_notes.txt").read_text() == "mine"


def test_overwrite_never_deletes_what_a_user_added(tokenizer_dir, nat_files, tmp_path, capsys):
    cfg = _config(tokenizer_dir, nat_files)
    out = tmp_path / "out"
    prepare(cfg, out, progress=False)
    (out / "NOTES.md").write_text("mine")
    (out / "merged").mkdir()  # e.g. `natscale merge out/merged ...` or an evaluation
    (out / "merged" / "x.json").write_text("[]")
    before = _snapshot(out)
    again = cfg.model_copy(update={"overwrite": True}, deep=True)
    with pytest.raises(FileExistsError, match=r"holds what natscale did not write there \(NOTES"):
        prepare(again, out, progress=False)
    assert _snapshot(out) == before
    # a marker from before the list of entries (version 1): the prepare layout stands in for it
    (out / MARKER).write_text(json.dumps({"kind": "prepared", "version": 1}))
    before = _snapshot(out)
    with pytest.raises(FileExistsError, match=r"NOTES\.md, merged\)"):
        prepare(again, out, progress=False)
    assert _snapshot(out) == before
    (out / "NOTES.md").unlink()
    (out / "merged" / "x.json").unlink()
    (out / "merged").rmdir()
    prepare(again, out, progress=False)  # only what natscale wrote: replaced
    assert read_marker(out) == "prepared"
